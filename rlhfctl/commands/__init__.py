"""One module per subcommand: options -> frozen config -> run(config)."""
