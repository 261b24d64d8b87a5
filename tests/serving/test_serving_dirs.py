"""serving.serving_dirs: one serving dir per dataset in a work dir, nothing deleted."""

import json
import os

import pytest

from serving import serving_dirs as sd
from serving.serve import pick_serving_dir

SYN = sd.Stamp("synthetic", "synthetic")
MINE = sd.Stamp("mine", "/data/mine.yaml")


def claim(serving_dir, stamp):
    """claim's moves; its lock released at once, as a run's is at its end."""
    moves, lock = sd.claim(serving_dir, stamp)
    lock.close()
    return moves


def _push(serving_dir, name, version):
    path = os.path.join(serving_dir, "models", name, str(version))
    os.makedirs(path)
    open(os.path.join(path, "saved_model.pb"), "w").close()


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def test_switching_datasets_parks_each_ones_models_and_takes_them_back(tmp_path):
    serving = str(tmp_path / "serving")
    assert claim(serving, SYN) == []  # a fresh work dir: just the stamp
    assert json.load(open(os.path.join(serving, "dataset.json"))) == {
        "data": "synthetic", "dataset": "synthetic"}
    _push(serving, "ranking", 1)
    _push(serving, "user_tower_two_tower", 1)

    assert claim(serving, MINE) == [
        f"{serving} held the models of 'synthetic': kept aside as {serving}.synthetic"]
    # Nothing of synthetic's is left where mine's run pushes.
    assert _tree(serving) == ["dataset.json"] and sd.read_stamp(serving) == MINE
    assert _tree(serving + ".synthetic") == [
        "dataset.json", "models/ranking/1/saved_model.pb",
        "models/user_tower_two_tower/1/saved_model.pb"]
    _push(serving, "user_tower_two_tower", 7)

    assert claim(serving, SYN) == [
        f"{serving} held the models of 'mine': kept aside as {serving}.mine",
        f"the models of 'synthetic' from an earlier run are back in place: "
        f"{serving}.synthetic -> {serving}"]
    assert _tree(serving) == ["dataset.json", "models/ranking/1/saved_model.pb",
                              "models/user_tower_two_tower/1/saved_model.pb"]
    assert _tree(serving + ".mine") == ["dataset.json",
                                        "models/user_tower_two_tower/7/saved_model.pb"]
    assert not os.path.exists(serving + ".synthetic")
    # The same dataset again: nothing moves; the stamp records the latest --data.
    assert claim(serving, sd.Stamp("synthetic", "synthetic")) == []
    assert sd.find(serving, "synthetic") == serving and sd.find(serving, "mine") == serving + ".mine"
    assert sd.find(serving, "movielens") is None


def test_an_unstamped_dir_is_taken_as_the_running_datasets(tmp_path):
    serving = str(tmp_path / "serving")
    _push(serving, "ranking", 3)  # written before stamps existed
    assert sd.find(serving, "anything") == serving
    assert claim(serving, MINE) == []
    assert sd.read_stamp(serving) == MINE and _tree(serving) == [
        "dataset.json", "models/ranking/3/saved_model.pb"]


def test_a_stamp_alone_is_replaced_not_parked(tmp_path):
    serving = str(tmp_path / "serving")
    claim(serving, SYN)  # a run that stopped before its first push
    assert claim(serving, MINE) == [] and sd.read_stamp(serving) == MINE
    assert not os.path.exists(serving + ".synthetic")


def test_what_is_in_the_way_is_named_and_left_alone(tmp_path):
    serving = str(tmp_path / "serving")
    claim(serving, SYN)
    _push(serving, "ranking", 1)
    os.makedirs(serving + ".synthetic")  # someone's own folder
    with pytest.raises(sd.ServingDirError) as err:
        claim(serving, MINE)
    assert str(err.value) == (
        f"{serving} serves 'synthetic', and {serving}.synthetic, where it would be kept while "
        "'mine' runs, exists already: move one of them away")
    assert sd.read_stamp(serving) == SYN and _tree(serving + ".synthetic") == []
    # A parked dir with another dataset's stamp is not moved into place.
    os.rmdir(serving + ".synthetic")
    sd.write_stamp(serving + ".mine", SYN)
    with pytest.raises(sd.ServingDirError, match=r"mine should hold the serving dir of 'mine' but its "
                                                 r"stamp says synthetic$"):
        claim(serving, MINE)
    # Refused before anything moved.
    assert sd.read_stamp(serving) == SYN and _tree(serving) == [
        "dataset.json", "models/ranking/1/saved_model.pb"]
    assert not os.path.exists(serving + ".synthetic")
    with open(os.path.join(serving, "dataset.json"), "w") as f:
        f.write("{")
    with pytest.raises(sd.ServingDirError, match="not a serving-dir stamp"):
        sd.read_stamp(serving)


def test_serve_picks_the_stamped_dataset_or_the_asked_ones_dir(tmp_path, monkeypatch):
    serving = str(tmp_path / "serving")
    claim(serving, SYN)
    _push(serving, "ranking", 1)
    # No --data: the dataset the dir is stamped with.
    assert pick_serving_dir(serving, None) == (serving, "synthetic")
    assert pick_serving_dir(serving, "synthetic") == (serving, "synthetic")
    with pytest.raises(SystemExit) as err:
        pick_serving_dir(serving, "movielens")
    assert str(err.value) == (
        f"error: {serving} serves 'synthetic', not 'movielens', and no serving dir of "
        f"'movielens' is kept beside it ({serving}.movielens): run the pipeline on movielens "
        "first (make run DATA=movielens)")
    claim(serving, sd.Stamp("movielens", "movielens"))
    _push(serving, "ranking", 2)
    # synthetic's run is parked: asked for by name, serve finds it there.
    assert pick_serving_dir(serving, "synthetic") == (serving + ".synthetic", "synthetic")
    with pytest.raises(SystemExit) as err:
        pick_serving_dir(serving, "synthetic", explicit=True)
    assert str(err.value) == (f"error: --serving_dir {serving} serves 'movielens', not "
                              f"'synthetic'; the serving dir of 'synthetic' is {serving}.synthetic")
    # A stamp whose dataset YAML is gone cannot be served without --data.
    sd.write_stamp(serving, sd.Stamp("mine", str(tmp_path / "gone.yaml")))
    with pytest.raises(SystemExit, match=r"run with --data .*gone\.yaml, which no longer "
                                         r"exists: pass --data$"):
        pick_serving_dir(serving, None)
    # No stamp at all: serve's own inference, as before.
    assert pick_serving_dir(str(tmp_path / "old"), None) == (str(tmp_path / "old"), None)


def test_no_switch_while_a_server_or_a_run_holds_the_dirs(tmp_path):
    """A live `make serve` polls work/serving: moving it would feed its catalogue and store
    another dataset's models. Holders share the lock; a claim that moves needs it alone."""
    serving = str(tmp_path / "serving")
    claim(serving, SYN)
    _push(serving, "ranking", 1)
    server = sd.hold(serving)  # a running `make serve` (any dataset's)
    with pytest.raises(sd.ServingDirError) as err:
        claim(serving, MINE)
    assert str(err.value) == (
        f"{serving} serves 'synthetic' and is in use (`make serve` or another run holds "
        f"{serving}.lock): switching it to 'mine' would pull its models from under them. Stop "
        "them first, or run in another --work_dir")
    assert sd.read_stamp(serving) == SYN and not os.path.exists(serving + ".synthetic")
    # The same dataset moves nothing: its run may start beside the server.
    moves, run = sd.claim(serving, SYN)
    assert moves == []
    server.close()
    with pytest.raises(sd.ServingDirError, match="is in use"):  # the run still holds it
        claim(serving, MINE)
    run.close()
    assert claim(serving, MINE) == [
        f"{serving} held the models of 'synthetic': kept aside as {serving}.synthetic"]


def test_serve_without_models_points_at_the_last_report_or_at_make_run(tmp_path):
    from serving.serve import no_models_message
    serving = tmp_path / "serving"
    (serving / "models").mkdir(parents=True)
    models = serving / "models"
    assert no_models_message(str(serving), str(serving)) == (
        f"no pushed models under {models}: run `make run` first (or `make bench-serving`, "
        "which builds small demo models)")
    # A run whose data checks blocked every push still published its report.
    for stamp in ("1796409848", "1796400000"):  # the newer written first
        (serving / "reports" / stamp).mkdir(parents=True)
        (serving / "reports" / stamp / "report.md").write_text("# report")
        os.utime(serving / "reports" / stamp / "report.md", (int(stamp), int(stamp)))
    (tmp_path / "serving.mine").mkdir()
    latest = serving / "reports" / "1796409848" / "report.md"
    assert no_models_message(str(serving), str(serving)) == (
        f"no pushed models under {models}: the last run pushed none (its gates or data checks "
        f"refused them; see 'Pushed' and 'Data checks' in {latest}); other datasets' serving "
        f"dirs kept aside: {tmp_path / 'serving.mine'} (--data <dataset>)")
