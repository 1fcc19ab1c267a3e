from shared.publish.cli import entry

entry()
