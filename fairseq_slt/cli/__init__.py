"""The ``fairseq-slt`` console command and its subcommands."""
