"""Upload a written folder to a Hub model repository (created when missing)."""
from __future__ import annotations

from pathlib import Path

from shared.errors import RunError


def upload(folder: Path, repo_id: str, *, private: bool, revision: str | None = None,
           commit_message: str | None = None) -> str:
    """create_repo (exist_ok) + upload_folder; returns the commit's URL. A missing `revision`
    branch is created from main first, as upload_folder needs it to exist."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                   commit_message=commit_message or f"Upload {folder.name} with affect-publish")
    except Exception as err:  # noqa: BLE001 - the Hub's HTTP errors, or no network at all
        denied = isinstance(err, HfHubHTTPError) and getattr(err.response, "status_code", None) in (401, 403)
        first = "log in (`hf auth login`, or HF_TOKEN with write access), then" if denied else \
            "when the Hub is reachable,"
        again = f"hf upload {repo_id} {folder}" + (f" --revision {revision}" if revision else "")
        raise RunError(f"upload to {repo_id} failed ({' '.join(str(err).split())[:200]}); the folder is complete: "
                       f"{first} run `{again}`") from None
    return getattr(commit, "commit_url", str(commit))
