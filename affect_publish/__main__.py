from affect_publish.cli import entry

entry()
