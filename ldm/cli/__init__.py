"""The console scripts: argument parsing and one-line errors around ldm's library calls."""
