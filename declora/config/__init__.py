"""Run configuration: one frozen dataclass whose fields are the command-line flags and the TOML keys.

Every knob is declared once, in `fields`, with its default and its help string. `files.add_flags` turns the fields
into argparse flags, `files.load_toml` reads a file whose keys match the flags (`local-steps` or `local_steps`), and
`files.resolve` applies the precedence defaults < file < flags and `checks.validate` checks the result, so a bad
value stops the command with one clear line. Everything is importable from `declora.config`.
"""
from declora.config.checks import validate
from declora.config.fields import DEFAULT_RANK, MODES, SERVER_AGGREGATIONS, ConfigError, RunConfig
from declora.config.files import (RESUMABLE, add_flags, add_peer_flags, add_server_flags, flag_name, load_run_config,
                                  load_toml, make_out_dir, normalize_keys, resolve, write_run_config)

__all__ = ["ConfigError", "DEFAULT_RANK", "MODES", "RESUMABLE", "RunConfig", "SERVER_AGGREGATIONS", "add_flags",
           "add_peer_flags", "add_server_flags", "flag_name", "load_run_config", "load_toml", "make_out_dir",
           "normalize_keys", "resolve", "validate", "write_run_config"]
