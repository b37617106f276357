"""Push a checkpoint to the Hugging Face Hub (or any Hub-compatible endpoint named by `HF_ENDPOINT`).

    python -m recursive_latent.hub push CHECKPOINT_DIR user/name [--results ood_hops.json] [--private]
    python -m recursive_latent.hub push CHECKPOINT_DIR user/name --lane arith   # one lane adapter (+ config.json)

One commit uploads the weights, the remote-code files, the tokenizer, the training config, lane adapters
(`adapters/<lane>/`), the benchmark JSON with its plot, and a model card written for the repo. The local checkpoint is
read, never written. Files the repo already holds unchanged are not uploaded again. A lane pushed alone is pulled
alone with `model.load_lane(lane, "user/name", subfolder=f"adapters/{lane}")`, or with the base by `from_pretrained`.
"""

import argparse
import fnmatch
import sys
from pathlib import Path

from httpx2 import TransportError  # the Hub client's connection errors (huggingface_hub's HTTP library)
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from model_cards.generate import build_model_card

# Files a checkpoint-N directory keeps only so that training can resume; a pushed model does not need them.
RESUME_ONLY = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "training_args.bin", "ema.safetensors",
               "curriculum.json")


class HubPushError(RuntimeError):
    """A push that could not start or that the Hub refused; the message says which and why."""


def checkpoint_files(checkpoint_dir):
    """Every file of the checkpoint to upload, relative to it; the card is written for the repo instead."""
    files = []
    for path in sorted(checkpoint_dir.rglob("*")):
        relative = path.relative_to(checkpoint_dir).as_posix()
        if path.is_file() and relative != "README.md" and not any(fnmatch.fnmatch(path.name, p) for p in RESUME_ONLY):
            files.append(relative)
    return files


def push_checkpoint(checkpoint_dir, repo_id, *, results=None, lane=None, token=None, private=False,
                    commit_message=None):
    """Push `checkpoint_dir` to `repo_id` in one commit and return the commit info.

    `results` is the benchmark JSON of this checkpoint (default: `ood_hops.json` inside it); it is uploaded as
    `ood_hops.json` with its plot, and the card's `model-index` is built from it. With `lane`, only that lane's
    adapter folder and `config.json` (which lists the lanes) are pushed.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "config.json").is_file():
        raise HubPushError(f"{checkpoint_dir} is not a checkpoint directory (no config.json)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubPushError(f"bad repo id {repo_id!r}: {error}") from None
    if "/" not in repo_id:
        raise HubPushError(f"bad repo id {repo_id!r}: give it as `user/name`")
    token = token or get_token()
    if token is None:
        raise HubPushError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN")

    if lane is not None:
        return push_lane(checkpoint_dir, repo_id, lane, token, private, commit_message)
    operations = [CommitOperationAdd(name, str(checkpoint_dir / name)) for name in checkpoint_files(checkpoint_dir)]
    results = Path(results) if results else checkpoint_dir / "ood_hops.json"
    if results.is_file() and results.parent.resolve() != checkpoint_dir.resolve():
        operations.append(CommitOperationAdd("ood_hops.json", str(results)))
        if results.with_suffix(".png").is_file():
            operations.append(CommitOperationAdd("ood_hops.png", str(results.with_suffix(".png"))))
    card = build_model_card(checkpoint_dir, results if results.is_file() else None, repo_id)
    operations.append(CommitOperationAdd("README.md", str(card).encode()))

    return commit(repo_id, operations, token, private, commit_message or f"Upload {checkpoint_dir.name}")


def push_lane(checkpoint_dir, repo_id, lane, token, private, commit_message):
    names = [name for name in checkpoint_files(checkpoint_dir) if name.startswith(f"adapters/{lane}/")]
    if not names:
        raise HubPushError(f"{checkpoint_dir} has no lane adapter {lane!r} (no adapters/{lane}/)")
    operations = [CommitOperationAdd(name, str(checkpoint_dir / name)) for name in names + ["config.json"]]
    return commit(repo_id, operations, token, private, commit_message or f"Upload lane {lane}")


def commit(repo_id, operations, token, private, message):
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.create_commit(repo_id, operations, commit_message=message)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "no answer"
        raise HubPushError(f"{constants.ENDPOINT} refused the push to {repo_id} (HTTP {status}): {error}") from None
    except (TransportError, OSError) as error:  # no answer at all: refused, unreachable, timed out
        reason = " ".join(str(error).split()) or type(error).__name__
        raise HubPushError(f"cannot reach {constants.ENDPOINT} to push to {repo_id} ({reason})") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="push a checkpoint directory to a Hub repo")
    push.add_argument("checkpoint", help="checkpoint directory, e.g. outputs/default/final")
    push.add_argument("repo_id", help="target repo, `user/name`")
    push.add_argument("--results", default=None, help="benchmark JSON of this checkpoint (default: CHECKPOINT/ood_hops.json)")
    push.add_argument("--lane", default=None, help="push only this lane's adapter (and config.json)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    args = parser.parse_args(argv)
    try:
        info = push_checkpoint(args.checkpoint, args.repo_id, results=args.results, lane=args.lane, token=args.token,
                               private=args.private)
    except HubPushError as error:
        sys.exit(f"error: {error}")
    print(f"pushed {args.checkpoint} to {args.repo_id}: {info.commit_url}")


if __name__ == "__main__":
    main()
