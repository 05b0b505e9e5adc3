"""What leaves the engine: AUTOMATIC1111 infotext, PNG files, new files that respect the umask."""
