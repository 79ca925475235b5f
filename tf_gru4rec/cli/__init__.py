"""The `tf-gru4rec` command line: `main` parses and dispatches (`cli.main`), one module per
subcommand group (`train`, `prepare`, `serving`, `baselines`, `research`), the helpers they
share in `common`, argument types in `types`, result tables in `results_table`."""

from tf_gru4rec.cli.main import add_json_option, build_parser, entry, main

__all__ = ["add_json_option", "build_parser", "entry", "main"]
