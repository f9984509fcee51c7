"""``python -m services.deployer --config FILE`` runs the deployer.

``python -m services.deployer rotate-signing-key [--config FILE]`` replaces the platform's
signing key with a new one and appends the rotation statement, signed by both keys, to
``security.signing_chain_path`` (resumable: run it again after an interruption). Restart
the deployers afterwards: they sign with the new key and send the chain with every
manifest, so devices follow the rotation (docs/security.md).
"""

import argparse
import sys
from pathlib import Path

from services.common.config import ConfigError, config_path_from_env, load_settings
from services.common.keys import KeyFileError
from services.common.runner import run_service
from services.common.signing_keys import rotate_signing_key
from services.deployer.app import create_service


def _rotate(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.deployer rotate-signing-key")
    parser.add_argument("--config", type=Path, default=config_path_from_env())
    args = parser.parse_args(argv)
    try:
        done = rotate_signing_key(load_settings(args.config).security)
    except (ConfigError, KeyFileError) as exc:
        print(f"deployer: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(
        f"signing key {done.previous_key_id} -> {done.new_key_id} (version {done.version})\n"
        f"the retired key is in {done.retired_path}: move it offline or destroy it once the "
        "deployers run with the new key\nrestart the deployers now",
        file=sys.stderr,
    )


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "rotate-signing-key":
        _rotate(argv[1:])
    else:
        run_service("deployer", create_service, argv)


main()
