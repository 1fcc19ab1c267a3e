"""Publish a finished run of any stage as a Hugging Face Hub model repository (`affect-publish`).

    runs.py      which stage a run folder is from, and which of its files get published
    folders.py   the weights of the Hub folder, per stage
    card.py      the model card; results.py, mixture.py, lineage.py, licences.py feed it
    hub.py       the upload
    cli.py       the command
"""
