"""BlendFitter: fits the final-list blend on validation requests and publishes it.

Runs after the pushers and index builders, against what is served now:
<serving_dir>/models (the ranker and the user towers) and
<serving_dir>/indexes. Requests from the validation period (the latest
models.validation.DEFAULT_VALIDATION_FRACTION of the retrieval Split-train's
time span; the eval split is never read) are replayed through
serving.recommender.Recommender exactly as `make serve` answers them
(serving.replay), and the blend's weights are fitted to those requests'
next clicks (serving.blend.fit_blend). The result is published atomically as
<serving_dir>/blend.json, which serving.serve ranks with. Why a blend: the
ranker estimates P(click | impression), the replayed next click also follows
the recall channels' evidence and exposure; bench.funnel_bench measures the
difference (README "Measured results").

With no ranking model served yet (a first run whose gate refused the
candidate) the blend is fitted without the ranker's features: the
recommender then ranks by the channels and popularity instead of failing
(serving.recommender); the next run with a pushed ranker refits with it.
Nothing is published (and the reason recorded) when the raw items glob
matches no file (a table split over files is read whole), when no validation
request has its target among the candidates, or when fewer than
`min_requests` do (a dozen weights fitted on a few dozen requests take
extreme values: seen at 30 requests on a 6,000-event run); an earlier
blend.json then stays, as an earlier model version does, except in a run
without a ranking stage (use_ranker 0) where the earlier blend weighs a
ranker, or there is none and a ranker is pushed: the merge order is
published instead, so serving calls no ranker trained on other data.
"""

import json
import os
import tempfile

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.artifacts import FeatureVocabulary, FinalBlend, PushedIndex

PUBLISHED_KEY, PATH_KEY, REASON_KEY = "published", "published_path", "reason"
RANKING_SERVED_NAME = "ranking"
FIT_FILE = "fit.json"


def table_files(pattern: str) -> list[str] | None:
    """The files a raw-table glob matches, sorted, as the sessionize job matches them (Beam's
    FileSystems); None for no glob or no match. The serving readers take a table's parts."""
    from beam_jobs import raw_io
    if not pattern:
        return None
    try:
        return raw_io.check_table_matches("table", pattern)
    except raw_io.RawTableError:
        return None


def publish(text: str, path: str) -> None:
    """Writes `path` atomically: a reader sees the old file or the new one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".blend-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _refuse(blend: FinalBlend, reason: str) -> None:
    blend.set_int_custom_property(PUBLISHED_KEY, 0)
    blend.set_string_custom_property(REASON_KEY, reason)


@component
def BlendFitter(  # noqa: N802
        retrieval_examples: InputArtifact[standard_artifacts.Examples],
        vocabulary: InputArtifact[FeatureVocabulary],
        blend: OutputArtifact[FinalBlend],
        serving_dir: Parameter[str],
        items: Parameter[str],
        users: Parameter[str] = "",
        num_requests: Parameter[int] = 3000,
        min_requests: Parameter[int] = 100,
        seed: Parameter[int] = 0,
        use_ranker: Parameter[int] = 1,
        ranking_pushed: InputArtifact[standard_artifacts.PushedModel] = None,
        item2vec_index: InputArtifact[PushedIndex] = None,
        youtubenet_index: InputArtifact[PushedIndex] = None,
        two_tower_index: InputArtifact[PushedIndex] = None):
    """Fits and publishes <serving_dir>/blend.json.

    Args:
      retrieval_examples: ClickLogExampleGen's retrieval examples (Split-train
        holds the validation period).
      vocabulary: its vocabularies and feature_config.yaml.
      blend: blend.json and fit.json (weights, likelihoods, validation HR@10
        of the ranker's order, the blend and each channel); `published`,
        `published_path`, `reason`.
      serving_dir: the serving layout the pushers and index builders write.
      items, users: the raw tables (globs) the serving catalogue and profiles
        are read from.
      num_requests: validation requests replayed at most (a seeded sample).
      min_requests: fewest usable requests (target among the candidates) a
        published blend is fitted on.
      seed: the sample's seed.
      use_ranker: 0 in a run without a ranking stage (a log without
        impressions): a ranker in serving_dir was pushed by an earlier run on
        other data, so it is not called and the blend is fitted without it.
      ranking_pushed, *_index: the pushes this step must follow (their
        outcome is read from serving_dir itself: an earlier version serves
        when this run's was not pushed).
    """
    from feature_contract import feature_config as fc
    from models import inputs
    from models.recall import data
    from serving.blend import BLEND_FILE, Blend, merge_order
    from serving.replay import fit_validation_blend

    del ranking_pushed, item2vec_index, youtubenet_index, two_tower_index  # ordering only
    from serving.servables import list_versions
    ranking_dir = os.path.join(serving_dir, "models", RANKING_SERVED_NAME)
    ranker = bool(use_ranker) and bool(list_versions(ranking_dir))
    published = os.path.join(serving_dir, BLEND_FILE)

    def refuse(reason: str) -> None:
        _refuse(blend, reason)
        if use_ranker:
            return
        # No ranking stage in this run: an earlier blend that weighs a ranker,
        # or (with none) the pushed ranker alone, would order this run's lists
        # by a ranker trained on other data. Merge order replaces them.
        earlier = Blend.read(published) if os.path.exists(published) else None
        if earlier.uses_ranker if earlier is not None else list_versions(ranking_dir):
            publish(merge_order(reason).to_json(), published)
            blend.set_int_custom_property(PUBLISHED_KEY, 1)
            blend.set_string_custom_property(PATH_KEY, published)
            blend.set_string_custom_property(
                REASON_KEY, f"merge order published ({reason}): the run has no ranking stage "
                            "and what was served would order by a ranker (use_ranker 0)")

    items_table = table_files(items)
    if items_table is None:
        refuse(f"the items glob {items!r} matches no file")
        return
    config = fc.load(os.path.join(vocabulary.uri, "feature_config.yaml"))
    train = data.load_examples(inputs.split_pattern(retrieval_examples.uri, fc.TRAIN), config,
                               fc.RETRIEVAL)
    try:
        fitted, record = fit_validation_blend(
            train, config, serving_dir, items_table, table_files(users), blend.uri,
            num_requests, seed, log=print, use_ranker=bool(use_ranker))
    except ValueError as err:  # no usable validation request
        refuse(f"blend not fitted: {err}")
        return
    if record["requests_used"] < min_requests:
        refuse(f"only {record['requests_used']} validation requests have their click "
                       f"among the candidates (min_requests {min_requests}): too few to fit "
                       "the blend's weights on")
        return
    text = fitted.to_json()
    with open(os.path.join(blend.uri, BLEND_FILE), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(blend.uri, FIT_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    publish(text, published)
    blend.set_int_custom_property(PUBLISHED_KEY, 1)
    blend.set_string_custom_property(PATH_KEY, published)
    blend.set_string_custom_property(REASON_KEY, "published" if ranker else (
        "published without the ranker's features: "
        + (f"no ranking model served under {ranking_dir}" if use_ranker else
           "the run has no ranking stage (use_ranker 0)")))
