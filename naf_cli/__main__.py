from naf_cli.cli.app import run

run()
