"""Create every persisted, uncached output of dvc.yaml (unfinished downloads, training state) that is
missing, empty, as a finished run leaves it. A stage pulled from the remote never ran here, and
git does not keep empty directories, so without this `dvc status` calls them deleted."""

from dvc.repo import Repo

with Repo(".") as repo:
    for stage in repo.index.stages:
        for out in stage.outs:
            if out.persist and not out.use_cache:
                out.fs.makedirs(out.fs_path, exist_ok=True)
