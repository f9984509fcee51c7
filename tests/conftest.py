"""The fixtures of every test come from ``tests.support.fixtures`` and
``tests.support.deployer_env``."""

pytest_plugins = ["tests.support.fixtures", "tests.support.deployer_env"]
