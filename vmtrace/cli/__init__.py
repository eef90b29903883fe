"""Command-line interface: one module per subcommand, errors mapped to one line at the edge."""
