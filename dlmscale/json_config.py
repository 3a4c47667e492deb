"""An ml_collections config file that reads a config saved as JSON: --config=<this file>:PATH.

main.py turns `--config=PATH.json` (and, in eval/sample/code modes, no --config at all: the run's
own <workdir>/<objective>/config.json) into this, so `--config.key=value` overrides still apply.
"""
from dlmscale.config_files import saved_config


def get_config(path):
  return saved_config(path)
