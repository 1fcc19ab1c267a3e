"""Publish a finished run of any stage as a Hugging Face Hub model repository (`affect-publish`).

It sits above the stages: it reads a run folder's run.json (shared/run_record.py, written by
the stage) and the files that record declares, and never imports a stage package.

    runs.py      the run as its run.json declares it, and the weights chosen
    folders.py   the weights of the Hub folder, by the declared files' kinds
    card.py      the model card; results.py, mixture.py, lineage.py, licences.py feed it
    hub.py       the upload
    cli.py       the command
"""
