"""One module per subcommand; each is a thin typed function over a library call."""
