"""CPU speed and memory tricks as swap-in modules with the same state-dict keys (`swap_in` installs them)."""
