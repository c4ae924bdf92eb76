"""The run manifest: what a checkpoint was trained from, on what, with which software.

Built once when training starts and stored in every checkpoint (key "manifest") and as
RUN_DIR/manifest.json: the resolved config, package versions, mtkit's git commit (when it runs
from a checkout), the machine and the precision actually used, every data file with its size and
SHA-256, the tokenizer's SHA-256, and the sacreBLEU signatures of the scores the run logs.
`mtkit info MODEL` prints it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mtkit import files
from mtkit.config import Config, SplitConfig, to_dict
from mtkit.data.tokenizer import Tokenizer
from mtkit.decoding.scoring import score
from mtkit.errors import CheckpointError, DataError
from mtkit.hardware import machine_report
from mtkit.model.checkpoint import load_checkpoint, resolve_model_path


def build(cfg: Config, tokenizer: Tokenizer, device: str, precision: str, processes: int) -> dict[str, Any]:
    """The manifest of a run about to train (see the module docstring)."""
    report = machine_report()
    manifest = {
        "config": to_dict(cfg),
        "versions": {k: report[k] for k in ("mtkit", "python", "torch", "sentencepiece", "sacrebleu", "datasets")},
        "git": git_commit(),
        "machine": {"device": device, "precision": precision, "threads": torch.get_num_threads(),
                    "processes": processes, "cpu": report["cpu"], "cpu_capability": report["cpu_capability"],
                    "cpu_native_bf16": report["cpu_native_bf16"], "platform": report["platform"],
                    "gpus": report["gpus"]},
        "data": {"train": train_files(cfg.data.train)} | {
            name: split_files(split) for name, split in (("valid", cfg.data.valid), ("test", cfg.data.test))
            if split is not None},
        "tokenizer_sha256": hashlib.sha256(b"".join(tokenizer.to_bytes().values())).hexdigest(),
        "metric_signatures": metric_signatures(),
    }
    return json.loads(json.dumps(manifest))  # plain JSON types: the checkpoint holds what manifest.json holds


def train_files(corpora: Sequence[SplitConfig]) -> dict[str, Any]:
    """split_files of the training corpus, or {"corpora": [split_files of each]} for several."""
    if len(corpora) == 1:
        return split_files(corpora[0])
    return {"corpora": [split_files(c) for c in corpora]}


def split_files(split: SplitConfig) -> dict[str, Any]:
    """Where a split comes from: each file (or every file of a folder) with its size and SHA-256,
    or the Hugging Face hub dataset's name, configuration and split."""
    if split.hub is not None:
        return {"hub": split.hub, "hub_config": split.hub_config, "split": split.split}
    paths = [Path(p) for p in (split.src, split.tgt, split.path) if p is not None]
    files = []
    for p in paths:
        members = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        files += [file_entry(f) for f in members]
    return {"files": files}


def file_entry(path: Path) -> dict[str, Any]:
    """{"path", "bytes", "sha256"} of one file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def git_commit() -> dict[str, Any] | None:
    """mtkit's commit and whether its checkout has uncommitted changes; None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit.stdout.strip(), "uncommitted_changes": bool(status.stdout.strip())}


def metric_signatures() -> dict[str, str]:
    """The sacreBLEU signatures of the BLEU and chrF that validation logs (scoring.score's defaults)."""
    return score(["a"], ["a"], metrics=("bleu", "chrf"))["signature"]  # a signature needs one scoring (nrefs)


def check_same_data(saved: dict[str, Any] | None, now: dict[str, Any], checkpoint: Path | None) -> None:
    """Refuse to resume when the training files' contents changed since `saved` (a checkpoint's
    manifest): the saved position in the epoch would then point into other data. Moved files with
    the same contents are fine; checkpoints from before manifests are not checked."""
    def content(source: dict[str, Any] | None) -> Any:  # what the files hold, not where they are
        if source and "corpora" in source:
            return [content(c) for c in source["corpora"]]
        return [f["sha256"] for f in source["files"]] if source and "files" in source else source

    if saved is None or content(saved["data"].get("train")) == content(now["data"]["train"]):
        return
    before = {f["path"]: f["sha256"] for f in source_files(saved["data"]["train"])}
    after = {f["path"]: f["sha256"] for f in source_files(now["data"]["train"])}
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p)) or ["the source"]
    raise DataError(f"{checkpoint}: the training data changed since it was saved ({', '.join(changed)}); restore"
                    " the files to resume, or start this run afresh with --overwrite")


def source_files(source: dict[str, Any]) -> list[dict[str, Any]]:
    """The file entries of a split's manifest entry (of every corpus, for several)."""
    if "corpora" in source:
        return [f for c in source["corpora"] for f in source_files(c)]
    return source.get("files", [])


def manifest_of(model_path: str | Path) -> dict[str, Any]:
    """The manifest stored in a checkpoint (or a run dir's best.pt)."""
    path = resolve_model_path(model_path)
    manifest = load_checkpoint(path).get("manifest")
    if manifest is None:
        raise CheckpointError(f"{path}: has no run manifest (saved before mtkit wrote them, or by `mtkit average`)")
    return manifest


def format_manifest(manifest: dict[str, Any]) -> str:
    """Readable lines for `mtkit info MODEL` (the config is left to `--json`)."""
    m, v = manifest["machine"], manifest["versions"]
    git = manifest.get("git")
    lines = [
        "software: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "mtkit source: " + (f"git {git['commit'][:12]}" + (" (with uncommitted changes)" if git["uncommitted_changes"]
                                                           else "") if git else "not a git checkout"),
        f"trained on: {m['device']}, precision {m['precision']}, {m['threads']} threads x {m['processes']}"
        f" process(es); {m['cpu']} ({m['cpu_capability']}); {m['platform']}",
        f"tokenizer sha256: {manifest['tokenizer_sha256']}",
    ]
    for split, entry in manifest["data"].items():
        named = [(f"{split}[{i}]", c) for i, c in enumerate(entry["corpora"])] if "corpora" in entry else [(split, entry)]
        for name, source in named:
            if "hub" in source:
                lines.append(f"{name}: hub {source['hub']} {source.get('hub_config') or ''} split {source['split']}")
            for f in source.get("files", []):
                lines.append(f"{name}: {f['path']} ({f['bytes']:,} bytes, sha256 {f['sha256'][:16]}...)")
    lines += [f"{k} signature: {sig}" for k, sig in manifest["metric_signatures"].items()]
    return "\n".join(lines)


def write(run_dir: Path, manifest: dict[str, Any]) -> None:
    """RUN_DIR/manifest.json, written atomically."""
    files.write_text(Path(run_dir) / "manifest.json", json.dumps(manifest, indent=1) + "\n")
