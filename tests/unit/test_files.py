"""``actors.files``: packing a model folder, the shipped copy on a node, outputs written back.

The file parts only: ``fetch`` stands in for ``ray.get`` (the real ``ray.put`` / ``ObjectRef`` path
is ``tests/integration/test_ship_files.py``).
"""

from __future__ import annotations

import pytest

from actors.files import (
    Shipping,
    digest,
    ensure_local,
    merge_files,
    pack_checkpoint,
    pack_folder,
    pack_tree,
    ships,
    write_files,
)
from rlhf.config import ConfigError, build_config


def model_folder(root):
    folder = root / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"\x00\x01weights")
    (folder / ".hidden").write_text("x")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (root / "blob").write_text("tokenizer")
    (folder / "tokenizer.json").symlink_to(root / "blob")  # as in the hub cache
    return folder


def always(files, node="driver"):
    return Shipping("always", node, model_ref=files, model_digest=digest(files))


def test_pack_folder_takes_top_level_files_and_follows_symlinks(tmp_path):
    packed = pack_folder(model_folder(tmp_path))
    assert packed == {"config.json": b'{"a": 1}', "model.safetensors": b"\x00\x01weights",
                      "tokenizer.json": b"tokenizer"}
    with pytest.raises(NotADirectoryError, match="not a folder"):
        pack_folder(tmp_path / "missing")


def test_pack_checkpoint_takes_what_the_learners_read(tmp_path):
    ckpt = tmp_path / "step-2"
    (ckpt / "learner").mkdir(parents=True)
    (ckpt / "learner" / "mp_rank_00_model_states.pt").write_bytes(b"w")
    (ckpt / "learner" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"o1")
    for name in ("rng-learner-0.pt", "rng-learner-1.pt", "rng-driver.pt", "state.json", "COMPLETE"):
        (ckpt / name).write_text(name)
    assert pack_checkpoint(ckpt, "learner") == {
        "learner/mp_rank_00_model_states.pt": b"w", "learner/zero_pp_rank_1_mp_rank_00_optim_states.pt": b"o1",
        "rng-learner-0.pt": b"rng-learner-0.pt", "rng-learner-1.pt": b"rng-learner-1.pt", "COMPLETE": b"COMPLETE"}
    with pytest.raises(FileNotFoundError, match="no 'other' folder"):
        pack_checkpoint(ckpt, "other")


def test_digest_depends_on_names_and_contents_not_order():
    assert digest({"a": b"1", "b": b"2"}) == digest({"b": b"2", "a": b"1"})
    assert digest({"a": b"1"}) != digest({"a": b"2"})
    assert digest({"a": b"1"}) != digest({"b": b"1"})
    assert digest({"a": b"12", "b": b""}) != digest({"a": b"1", "b": b"2"})


def test_no_record_or_inactive_shipping_reads_the_path_itself(tmp_path):
    def never_fetch(_):
        raise AssertionError("nothing may be fetched")

    assert ensure_local("/some/model", None, tmp_path, never_fetch) == "/some/model"
    assert ensure_local("/some/model", Shipping("never", "n"), tmp_path, never_fetch) == "/some/model"
    assert ensure_local("org/hub-name", Shipping("always", "n"), tmp_path, never_fetch) == "org/hub-name"
    assert not ships(None) and not ships(Shipping("never", "n")) and ships(Shipping("always", "n"))


def test_auto_ships_only_to_another_node():
    record = Shipping("auto", "node-a")
    assert not record.active("node-a")
    assert record.active("node-b")
    with pytest.raises(ValueError, match="auto, always, never"):
        Shipping("sometimes", "node-a")


def test_ensure_local_writes_one_complete_copy_per_node(tmp_path):
    packed = pack_folder(model_folder(tmp_path))
    fetched = []

    def fetch(ref):
        fetched.append(ref)
        return ref

    root = tmp_path / "node"
    local = ensure_local(str(tmp_path / "my-model"), always(packed), root, fetch)
    assert local.startswith(str(root / "my-model-")) and local != str(tmp_path / "my-model")
    assert pack_folder(local) == packed
    assert [p.name for p in root.iterdir()] == [local.rsplit("/", 1)[1]]  # no temp folder left
    again = ensure_local(str(tmp_path / "my-model") + "/", always(packed), root, fetch)
    assert again == local and len(fetched) == 1  # a second actor on the node reuses the copy


def test_other_contents_get_their_own_copy(tmp_path):
    root = tmp_path / "node"
    first = ensure_local("m", always({"config.json": b"1"}), root, lambda ref: ref)
    second = ensure_local("m", always({"config.json": b"2"}), root, lambda ref: ref)
    assert first != second and pack_folder(second) == {"config.json": b"2"}


def test_a_corrupt_transfer_is_refused_and_leaves_nothing(tmp_path):
    record = Shipping("always", "n", model_ref={"config.json": b"x"}, model_digest=digest({"config.json": b"y"}))
    with pytest.raises(ValueError, match="do not match"):
        ensure_local("m", record, tmp_path / "node", lambda ref: ref)
    assert not (tmp_path / "node").exists() or not any((tmp_path / "node").iterdir())


def test_outputs_round_trip_and_stay_inside_the_folder(tmp_path):
    src = tmp_path / "src"
    (src / "learner").mkdir(parents=True)
    (src / "learner" / "mp_rank_00_model_states.pt").write_bytes(b"model")
    (src / "rng-learner-0.pt").write_bytes(b"rng")
    files = pack_tree(src)
    assert files == {"learner/mp_rank_00_model_states.pt": b"model", "rng-learner-0.pt": b"rng"}
    write_files(tmp_path / "dst", files)
    assert pack_tree(tmp_path / "dst") == files
    for bad in ("../escape", "/etc/passwd", "a/../../escape"):
        with pytest.raises(ValueError, match="outside"):
            write_files(tmp_path / "dst", {bad: b""})


def test_merge_files_joins_ranks_and_refuses_a_clash():
    rank0 = {"learner/mp_rank_00_model_states.pt": b"m", "rng-learner-0.pt": b"0", "zero_to_fp32.py": b"s"}
    rank1 = {"rng-learner-1.pt": b"1", "zero_to_fp32.py": b"s"}
    assert merge_files([rank0, rank1]) == {**rank0, **rank1}
    assert merge_files(["/driver/folder", "/driver/folder"]) == {}
    with pytest.raises(ValueError, match="rank 1 sent 'rng-learner-0.pt'"):
        merge_files([rank0, {"rng-learner-0.pt": b"other"}])


def test_cluster_ship_files_config():
    assert build_config(algo="simpo").cluster.ship_files == "auto"
    assert build_config(algo="simpo", overrides=["cluster.ship_files=always"]).cluster.ship_files == "always"
    with pytest.raises(ConfigError, match="ship_files"):
        build_config(algo="simpo", overrides=["cluster.ship_files=sometimes"])


class FakeGroup:
    """Stands in for ``actors.group.ActorGroup``: ``call`` returns the ranks' given results."""

    def __init__(self, results):
        self.results = results

    def __len__(self):
        return len(self.results)

    def call(self, method, *args):
        return self.results


def test_learner_group_writes_what_shipping_ranks_send(tmp_path):
    from actors.learner_group import LearnerGroup

    sent = [{"learner/mp_rank_00_model_states.pt": b"m", "rng-learner-0.pt": b"0"}, {"rng-learner-1.pt": b"1"}]
    LearnerGroup(FakeGroup(sent), 1).save_checkpoint(str(tmp_path / "ckpt"), "learner")
    assert pack_tree(tmp_path / "ckpt") == {**sent[0], **sent[1]}
    assert LearnerGroup(FakeGroup([{"config.json": b"{}"}, {}]), 1).save(str(tmp_path / "model")) == str(
        tmp_path / "model")
    assert pack_tree(tmp_path / "model") == {"config.json": b"{}"}
    # ranks that wrote the folder themselves (no shipping) return its path: nothing more is written
    LearnerGroup(FakeGroup([str(tmp_path / "own"), str(tmp_path / "own")]), 1).save(str(tmp_path / "own"))
    assert not (tmp_path / "own").exists()


def test_learner_config_takes_a_shipping_record_only():
    from actors.learner import resolve_config

    assert resolve_config({"model_path": "m"})["ship"] is None
    record = Shipping("always", "n")
    assert resolve_config({"model_path": "m", "ship": record})["ship"] is record
    with pytest.raises(ValueError, match="ship must be an actors.files.Shipping"):
        resolve_config({"model_path": "m", "ship": "always"})
