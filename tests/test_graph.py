"""Trial-graph features and transitive consistency."""

import numpy as np
import pandas as pd
import pytest

from src.stacking.graph import (
    GraphSettings,
    capped_ranks,
    experiment_graph_features,
    graph_features,
    graph_similarity,
    nearest,
    similarity,
    two_hop,
)
from src.stacking.transitive import choose_shares, propagate, propagate_shares, relabel


def _speaker_vectors(
    n_speakers: int, per: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    speakers = np.repeat(np.arange(n_speakers), per)
    vectors = rng.normal(size=(n_speakers, 32))[speakers] + noise * rng.normal(
        size=(speakers.size, 32)
    )
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), speakers


def test_ranks_and_two_hop_match_brute_force() -> None:
    vectors, _ = _speaker_vectors(6, 5, 1.0, seed=0)
    rng = np.random.default_rng(1)
    left, right = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    sims = similarity(vectors)
    brute_rank = (sims[left] > sims[left, right][:, None]).sum(axis=1) + 1
    top = np.take_along_axis(sims, nearest(sims, 10), axis=1)
    ranks = capped_ranks(top, sims, left, right)
    np.testing.assert_array_equal(ranks, np.minimum(brute_rank, 11))  # counted up to the cap
    assert (brute_rank > 11).any() and (brute_rank < 11).any()
    brute_hop = [
        max(min(sims[a, c], sims[c, b]) for c in range(30) if c not in (a, b))
        for a, b in zip(left, right, strict=True)
    ]
    np.testing.assert_allclose(two_hop(sims, left, right), brute_hop, rtol=1e-6)


def test_second_order_features_match_brute_force_on_a_fused_graph() -> None:
    """The low-rank sums give the plain definitions: Pearson correlation of the two clips'
    similarities to every other clip, and the mean similarity of their expanded groups."""
    sets = [_speaker_vectors(6, 5, 1.0, seed=s)[0] for s in (20, 21)]
    rng = np.random.default_rng(22)
    left, right = rng.integers(0, 30, 150), rng.integers(0, 30, 150)
    features = graph_features(sets, left, right, GraphSettings(expand_k=3))
    sims = graph_similarity(sets).astype(np.float64)
    near = nearest(graph_similarity(sets), 3)
    full = np.where(np.isfinite(sims), sims, 1.0)  # a clip's similarity to itself is 1
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        if a == b:
            assert features["profile_corr"][i] == 1.0
        else:
            others = [c for c in range(30) if c not in (a, b)]
            expected = np.corrcoef(sims[a, others], sims[b, others])[0, 1]
            assert features["profile_corr"][i] == pytest.approx(expected, abs=1e-5)
        group_a, group_b = [a, *near[a]], [b, *near[b]]
        expected = full[np.ix_(group_a, group_b)].mean()
        assert features["expanded_sim"][i] == pytest.approx(expected, abs=1e-5)


def test_tree_similarity_agrees_with_every_cut() -> None:
    """Two clips share a cluster at cut height h exactly when their tree similarity is >= h;
    with cut heights given, it is measured from the loosest one and is 0 below it."""
    vectors, _ = _speaker_vectors(8, 5, 1.0, seed=23)
    rng = np.random.default_rng(24)
    left, right = rng.integers(0, 40, 300), rng.integers(0, 40, 300)
    cuts = (0.8, 0.5, 0.3, 0.1)
    plain = graph_features(vectors, left, right, GraphSettings(cuts=()))["tree_sim"].to_numpy()
    features = graph_features(vectors, left, right, GraphSettings(cuts=cuts))
    for i, cut in enumerate(cuts):
        flags = features[f"same_cluster_{i}"].to_numpy() == 1.0
        np.testing.assert_array_equal(flags, plain >= cut - 1e-9)
    np.testing.assert_allclose(features["tree_sim"], np.maximum(plain - 0.1, 0.0))
    assert 0 < features[f"same_cluster_{len(cuts) - 1}"].mean() < 1


def test_features_are_symmetric_in_the_pair() -> None:
    vectors, _ = _speaker_vectors(8, 4, 0.8, seed=2)
    rng = np.random.default_rng(3)
    left, right = rng.integers(0, 32, 100), rng.integers(0, 32, 100)
    settings = GraphSettings(k=(1, 3), cuts=(0.6, 0.3))
    forward = graph_features(vectors, left, right, settings)
    backward = graph_features(vectors, right, left, settings)
    pd.testing.assert_frame_equal(forward, backward)


def test_graph_features_separate_speakers_better_than_the_raw_score() -> None:
    """Clips of a speaker recur in the graph: neighbourhood evidence beats one noisy cosine."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    vectors, speakers = _speaker_vectors(20, 8, 1.6, seed=4)
    rng = np.random.default_rng(5)
    left, right = rng.integers(0, 160, 3000), rng.integers(0, 160, 3000)
    keep = left != right
    left, right = left[keep], right[keep]
    same = (speakers[left] == speakers[right]).astype(int)
    features = graph_features(vectors, left, right, GraphSettings(cuts=(0.3,)))
    raw = similarity(vectors)[left, right]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    combined = cross_val_predict(
        model, features.assign(raw=raw), same, cv=3, method="predict_proba"
    )
    assert roc_auc_score(same, combined[:, 1]) > roc_auc_score(same, raw) + 0.02


def _experiment(seed: int):
    vectors, speakers = _speaker_vectors(12, 5, 1.0, seed)
    ids = np.array([f"train/{s}/{i}.wav" for i, s in enumerate(speakers)])
    fold = speakers % 2
    rng = np.random.default_rng(seed)
    trials = []
    for k in (0, 1):
        members = np.flatnonzero(fold == k)
        a, b = rng.choice(members, 80), rng.choice(members, 80)
        keep = a != b
        a, b = a[keep], b[keep]
        label = (speakers[a] == speakers[b]).astype(int)
        cosine = np.einsum("ij,ij->i", vectors[a], vectors[b])
        trials.append(pd.DataFrame({"fold": k, "audio_1": ids[a], "audio_2": ids[b],
                                    "label": label, "cosine": cosine}))  # fmt: skip
    oof = pd.concat(trials, ignore_index=True)
    test_vectors, _ = _speaker_vectors(4, 5, 1.0, seed + 1)
    names = np.array([f"t{i}.wav" for i in range(20)])
    test = pd.DataFrame(
        {"audio_1": names[rng.integers(0, 20, 50)], "audio_2": names[rng.integers(0, 20, 50)]}
    )
    embeddings = {}
    for k in (0, 1):
        in_fold = fold == k
        embeddings[k] = [{
            "ids": np.concatenate([ids[in_fold], "public-test/" + names]),
            "role": np.array(["oof"] * in_fold.sum() + ["test"] * 20),
            "vectors": np.concatenate([vectors[in_fold], test_vectors + 0.01 * k]),
        }]  # fmt: skip
    return embeddings, oof, test


def test_graph_features_read_no_label() -> None:
    """Shuffling every OOF label leaves every fold's OOF and test graph features unchanged (the
    cut heights are shares of each graph's own pairs); each fold has its own test view."""
    embeddings, oof, test = _experiment(seed=6)
    before_oof, before_test = experiment_graph_features(embeddings, oof, test, "cnn")
    shuffled = oof.assign(label=oof["label"].sample(frac=1, random_state=0).to_numpy())
    after_oof, after_test = experiment_graph_features(embeddings, shuffled, test, "cnn")
    pd.testing.assert_frame_equal(before_oof, after_oof)
    for fold in (0, 1):
        pd.testing.assert_frame_equal(before_test[fold], after_test[fold])
    assert list(before_test) == [0, 1] and not before_test[0].equals(before_test[1])  # per fold
    assert before_oof.columns.equals(before_test[0].columns)  # one code path, one column set
    assert any(c.startswith("cnn__g_same_cluster_") for c in before_oof.columns)


def test_oof_and_test_pairs_share_one_graph_per_fold() -> None:
    """A fold's OOF trial and a test pair made of the same two vectors get the same features:
    both are read from the fold's one graph of its held-out and the test clips."""
    embeddings, oof, test = _experiment(seed=8)
    emb = embeddings[0][0]
    held_out = np.flatnonzero(emb["role"] == "oof")
    tests = np.flatnonzero(emb["role"] == "test")
    emb["vectors"][tests[:2]] = emb["vectors"][held_out[:2]]  # two test clips copy two OOF ones
    names = [k.rsplit("/", 1)[-1] for k in emb["ids"][tests[:2]]]
    oof_pair = pd.DataFrame({"fold": [0], "audio_1": [emb["ids"][held_out[0]]],
                             "audio_2": [emb["ids"][held_out[1]]], "label": [0]})  # fmt: skip
    trials = pd.concat([oof, oof_pair], ignore_index=True)
    pairs = pd.concat(
        [test, pd.DataFrame({"audio_1": [names[0]], "audio_2": [names[1]]})], ignore_index=True
    )
    oof_features, test_views = experiment_graph_features(embeddings, trials, pairs, "cnn")
    row, test_row = oof_features.iloc[-1], test_views[0].iloc[-1]
    # (not profile_corr: it runs over the held-out clips, the OOF pair's two among them)
    same = ["cnn__g_local_norm", "cnn__g_expanded_sim", "cnn__g_tree_sim"]
    np.testing.assert_allclose(row[same].to_numpy(float), test_row[same].to_numpy(float), 1e-5)


def test_propagate_moves_only_uncertain_pairs() -> None:
    pairs = pd.DataFrame(
        {"audio_1": ["a", "b", "a", "a", "c"], "audio_2": ["b", "c", "c", "d", "d"]}
    )
    probs = np.array([0.97, 0.96, 0.4, 0.5, 0.01])
    out = propagate(pairs, probs, high=0.9, low=0.05)
    # a-b-c confidently one speaker: a-c raised; c-d confidently apart, so a-d lowered
    assert out.tolist() == [0.97, 0.96, 0.9, 0.05, 0.01]


def test_shares_are_off_when_they_do_not_help() -> None:
    trials = pd.DataFrame(
        {"fold": [0] * 4, "audio_1": list("abcd"), "audio_2": list("efgh"), "label": [1, 1, 0, 0]}
    )
    choice = choose_shares(trials, np.array([0.9, 0.8, 0.2, 0.1]), 0.5)
    assert choice.high_share is None and choice.oof_accuracy_before == 1.0


def test_raised_pairs_keep_their_order() -> None:
    """Two uncertain pairs raised by the same component: the one at 0.85 keeps the last
    positive slot ahead of the one at 0.40, wherever the rows stand."""
    pairs = pd.DataFrame({"audio_1": list("aabbaxyzuv"), "audio_2": list("bcccdqrstw")})
    probs = np.array([0.99, 0.40, 0.97, 0.96, 0.30, 0.85, 0.2, 0.1, 0.05, 0.01])
    # a-b-c one component: a-c (0.40) is raised; x-q (0.85) stays; a-d (0.30) stays
    moved = propagate(pairs, probs, high=0.95, low=0.02)
    assert moved[1] == 0.95 and moved[5] == 0.85
    pairs = pd.concat([pairs, pd.DataFrame({"audio_1": ["e"], "audio_2": ["f"]})])
    probs = np.append(probs, 0.86)  # e-f: uncertain, a lone pair, stays
    moved = propagate(pairs, probs, high=0.95, low=0.02)
    labels = relabel(moved, probs, 4 / 11)  # 4 slots: three sure pairs and a-c
    assert labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    tied = propagate(pairs, np.where(np.arange(11) == 5, 0.5, probs), high=0.95, low=0.02)
    assert tied[1] == 0.95  # ties with a sure pair at exactly 0.95 go to the sure pair first
    reordered = relabel(np.array([0.9, 0.9, 0.9]), np.array([0.4, 0.85, 0.9]), 0.34)
    assert reordered.tolist() == [0, 0, 1]


def test_shares_are_placed_on_each_graph() -> None:
    """The same share raises the same pairs of a graph whatever its probabilities' scale."""
    pairs = pd.DataFrame({"audio_1": list("aabd"), "audio_2": list("bcce")})
    probs = np.array([0.9, 0.5, 0.8, 0.1])
    scaled = 0.5 * probs + 0.4
    out, out_scaled = (
        propagate_shares(pairs, probs, 0.5, 0.25),
        propagate_shares(pairs, scaled, 0.5, 0.25),
    )
    assert (out > probs).tolist() == (out_scaled > scaled).tolist() == [False, True, False, False]


@pytest.mark.parametrize("n", [40, 160])
def test_same_speaker_ranks_do_not_grow_with_the_graph(n: int) -> None:
    """With 4 clips a speaker, a same-speaker pair ranks among the first few neighbours in a
    graph of 40 clips as in one of 160: the features measure speakers, not graph size."""
    vectors, _ = _speaker_vectors(n // 4, 4, 0.9, seed=7)
    left = np.arange(0, n, 4)
    features = graph_features(vectors, left, left + 1, GraphSettings())
    assert np.exp(features["log_rank_max"]).median() <= 3


def test_a_self_pair_is_its_own_nearest_neighbour() -> None:
    vectors, _ = _speaker_vectors(4, 4, 0.8, seed=9)
    features = graph_features(
        vectors, np.array([3, 3]), np.array([3, 5]), GraphSettings(cuts=(0.4,))
    )
    assert np.isfinite(features.to_numpy()).all()
    assert features.loc[0, "log_rank_max"] == 0.0 and features.loc[0, "same_cluster_0"] == 1.0
    assert features.loc[0, "tree_sim"] == 1.0 - 0.4 and features.loc[0, "profile_corr"] == 1.0


def test_a_fold_s_labels_never_reach_its_own_oof_predictions(tmp_path) -> None:
    """At the level of the cross-fitted stack: permuting fold 0's OOF labels leaves fold 0's
    OOF predictions unchanged, with every graph-feature group (the graph stacker), without them
    (the bundle's stacker), and each group's features themselves; other folds' change."""
    from src.stacking.inputs import align_experiments, load_experiment
    from src.stacking.stack import GRAPH_GROUPS, graph_group_columns, load_graph_views, run_stack
    from tests.fixtures.graph_inputs import write_graph_inputs

    cfg, _ = write_graph_inputs(tmp_path, trials_per_fold=300, n_test_pairs=200)
    directory = cfg.paths.outputs / "cnn"
    before = run_stack(cfg, [directory], tmp_path / "before")
    views_before, _ = load_graph_views(align_experiments([load_experiment(directory)]), [directory])
    path = directory / "oof_scores.csv"
    table = pd.read_csv(path)
    in_fold0 = (table["fold"] == 0).to_numpy()
    table.loc[in_fold0, "label"] = np.random.default_rng(0).permutation(table["label"][in_fold0])
    table.to_csv(path, index=False)
    after = run_stack(cfg, [directory], tmp_path / "after")
    views_after, _ = load_graph_views(align_experiments([load_experiment(directory)]), [directory])
    assert before.metrics["graph_guard"]["dropped_groups"] == []  # every group was stacked
    for column in ("prob", "prob_without_graph", "prob_bundle"):
        np.testing.assert_array_equal(before.oof[column][in_fold0], after.oof[column][in_fold0])
        assert not np.array_equal(before.oof[column][~in_fold0], after.oof[column][~in_fold0])
    oof_before, oof_after = views_before["cnn"][0], views_after["cnn"][0]
    for group in GRAPH_GROUPS:
        columns = graph_group_columns(oof_before.columns, group)
        assert columns, group
        pd.testing.assert_frame_equal(oof_before[columns], oof_after[columns])


def test_the_graph_guard_warns_and_leaves_out_a_shifted_group(tmp_path, caplog) -> None:
    """A group whose test features sit far from its OOF ones is named in the log, left out of
    the graph stacker and reported; unequal fold graphs are a size warning."""
    from src.report.report import graph_markdown
    from src.stacking.graph import GraphSize
    from src.stacking.inputs import align_experiments, load_experiment
    from src.stacking.stack import (
        graph_group_columns,
        graph_guard,
        load_graph_views,
        without_groups,
    )
    from tests.fixtures.graph_inputs import write_graph_inputs

    cfg, _ = write_graph_inputs(tmp_path, trials_per_fold=200, n_test_pairs=200)
    directory = cfg.paths.outputs / "cnn"
    experiments = align_experiments([load_experiment(directory)])
    views, sizes = load_graph_views(experiments, [directory])
    assert sizes[0] == GraphSize(held_out=120, test=144)
    oof, tests = views["cnn"]
    shifted = graph_group_columns(oof.columns, "paths")
    tests = {f: t.assign(**{c: t[c] + 10.0 for c in shifted}) for f, t in tests.items()}
    views = {"cnn": (oof, tests)}
    sizes = {**sizes, 0: GraphSize(held_out=120, test=1440)}
    with caplog.at_level("WARNING"):
        guard = graph_guard(views, sizes, experiments[0], cfg)
    assert guard.dropped == ["paths"] and guard.aucs["paths"] > 0.9
    assert guard.size_ratio > 1.5
    assert "'paths'" in caplog.text and "left out of the graph stacker" in caplog.text
    assert "differ in size" in caplog.text
    kept = without_groups(views, guard.dropped)["cnn"]
    assert not set(shifted) & set(kept[0].columns) and kept[0].columns.equals(kept[1][0].columns)
    changes = {
        "eer_with": 0.1,
        "eer_without": 0.1,
        "accuracy_with": 0.9,
        "accuracy_without": 0.9,
        "by": {"shorter_clip": pd.DataFrame({"a": [1]}), "gender_pair": pd.DataFrame({"a": [1]})},
        "adversarial": guard.aucs,
        "guard": guard.to_json(),
    }
    assert "left out of the graph stacker" in "\n".join(graph_markdown(changes))


@pytest.mark.parametrize("factor", [1, 4])
def test_a_grown_test_graph_does_not_cost_accuracy(tmp_path, factor: int) -> None:
    """The same test pairs, the test graph grown with unpaired clips of unseen speakers: the
    graph stack stays at least as accurate as the stack without graph features."""
    from src.stacking.stack import run_stack
    from src.stacking.threshold import balanced_labels
    from tests.fixtures.graph_inputs import write_graph_inputs

    options = dict(noise=1.6, clips_per_speaker=8, trials_per_fold=500, n_test_pairs=400)
    cfg, key = write_graph_inputs(tmp_path, extra_test_clips=(factor - 1) * 192, **options)
    result = run_stack(cfg, [cfg.paths.outputs / "cnn"], tmp_path / "stack")
    with_graph, without = (
        float((balanced_labels(result.test[c].to_numpy(), 0.5)[0] == key).mean())
        for c in ("prob", "prob_without_graph")
    )
    assert result.metrics["graph_guard"]["graph_clips"]["fold0"]["test"] == 192 * factor
    assert with_graph >= without, (with_graph, without)


def test_optimised_steps_match_plain_references() -> None:
    """The fast paths give the plain definitions on a small graph: the similarity of one
    product per model set, each clip's neighbours by a full sort, and the merge heights of
    scipy's whole cophenetic matrix (a speaker-structured graph and one without structure)."""
    from scipy.cluster.hierarchy import cophenet

    from src.stacking.graph import cluster_tree, tree_similarity

    structured, _ = _speaker_vectors(12, 6, 1.0, seed=40)
    plain = np.random.default_rng(41).normal(size=(90, 16))
    plain = (plain / np.linalg.norm(plain, axis=1, keepdims=True)).astype(np.float32)
    rng = np.random.default_rng(42)
    for vectors in (structured, plain):
        n = vectors.shape[0]
        sims = similarity(vectors)
        reference = vectors.astype(np.float64) @ vectors.astype(np.float64).T
        off = ~np.eye(n, dtype=bool)
        np.testing.assert_allclose(sims[off], reference[off], atol=1e-6)
        assert np.isneginf(np.diag(sims)).all()
        k = 20
        np.testing.assert_array_equal(nearest(sims, k), np.argsort(-sims, axis=1)[:, :k])
        left, right = rng.integers(0, n, 500), rng.integers(0, n, 500)
        tree = cluster_tree(sims)
        low, high = np.minimum(left, right), np.maximum(left, right)
        condensed = n * low - low * (low + 1) // 2 + (high - low - 1)
        expected = np.where(low == high, 1.0, 1.0 - cophenet(tree)[np.maximum(condensed, 0)])
        np.testing.assert_array_equal(tree_similarity(tree, n, left, right), expected)
        assert (left == right).any()


def test_nearest_on_a_large_graph_matches_a_full_sort_with_ties() -> None:
    """Above ``2 * NEAR_SAMPLE`` clips the rows are cut to sampled candidates first: the same
    neighbours as a full stable sort, duplicated clips (tied similarities) included."""
    from src.stacking.graph import NEAR_SAMPLE

    rng = np.random.default_rng(43)
    n = 2 * NEAR_SAMPLE + 60
    vectors = rng.normal(size=(n, 24)).astype(np.float32)
    vectors[100:180] = vectors[0]  # 81 copies of one clip: ties across the 64th neighbour
    vectors[n - 30 :] = vectors[1]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = similarity(vectors)
    for k in (1, 10, 64):
        np.testing.assert_array_equal(
            nearest(sims, k), np.argsort(-sims, axis=1, kind="stable")[:, :k]
        )


def test_profile_corr_holds_when_the_test_graph_grows() -> None:
    """The same held-out speakers and OOF trials, the fold graphs grown 4x with unpaired test
    clips of unrelated speakers (tight groups of 8 clips each): the OOF trials' ``profile_corr``
    stays where it was, as it runs over the fold's held-out clips. (Over every clip of the
    graph, unrelated clips outnumbered the held-out ones and moved it by 0.1 on the median.)"""
    embeddings, oof, test = _experiment(seed=10)
    rng = np.random.default_rng(11)
    extra, _ = _speaker_vectors(30, 8, 0.3, seed=12)  # 240 clips: 4x the 60 held-out + test
    names = np.array([f"public-test/unpaired_{i}.wav" for i in range(extra.shape[0])])
    grown = {
        k: [{
            "ids": np.concatenate([e["ids"], names]),
            "role": np.concatenate([e["role"], np.full(names.size, "test")]),
            "vectors": np.concatenate([e["vectors"], extra + 0.01 * rng.normal(size=extra.shape)]),
        } for e in sets]
        for k, sets in embeddings.items()
    }  # fmt: skip
    before, test_before = experiment_graph_features(embeddings, oof, test, "cnn")
    after, test_after = experiment_graph_features(grown, oof, test, "cnn")
    column = "cnn__g_profile_corr"
    np.testing.assert_allclose(after[column], before[column], atol=1e-6)
    np.testing.assert_allclose(test_after[0][column], test_before[0][column], atol=1e-6)
    assert before[column].std() > 0.1  # it does vary between pairs


def test_profile_corr_over_a_cohort_matches_brute_force() -> None:
    """With a cohort (the first rows: a fold's held-out clips), ``profile_corr`` is the Pearson
    correlation over the cohort's clips, a and b left out where they are among them."""
    from src.stacking.graph import second_order_features

    vectors, _ = _speaker_vectors(6, 5, 1.0, seed=25)
    rng = np.random.default_rng(26)
    left, right = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    sims = similarity(vectors)
    features = second_order_features(
        sims, vectors.astype(np.float64), nearest(sims, 3), left, right, 3, cohort=12
    )
    full = sims.astype(np.float64)
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        others = [c for c in range(12) if c not in (a, b)]
        expected = 1.0 if a == b else np.corrcoef(full[a, others], full[b, others])[0, 1]
        assert features["profile_corr"][i] == pytest.approx(expected, abs=1e-5)
    assert ((left < 12) != (right < 12)).any() and ((left >= 12) & (right >= 12)).any()


@pytest.mark.parametrize("fused_only", [True, False])
def test_several_experiments_read_their_fused_graph(tmp_path, fused_only: bool) -> None:
    """Two experiments stacked together: by default (``stack.graph_fused_only``) the graph
    stacker reads the fused graph only; switched off, each experiment's graph as well."""
    import shutil

    from src.stacking.stack import run_stack
    from tests.fixtures.graph_inputs import write_graph_inputs

    cfg, _ = write_graph_inputs(tmp_path, trials_per_fold=200, n_test_pairs=100)
    shutil.copytree(cfg.paths.outputs / "cnn", cfg.paths.outputs / "cnn2")
    stack = cfg.stack.model_copy(
        update={"experiments": ["cnn", "cnn2"], "graph_fused_only": fused_only}
    )
    dirs = [cfg.paths.outputs / "cnn", cfg.paths.outputs / "cnn2"]
    result = run_stack(cfg.model_copy(update={"stack": stack}), dirs, tmp_path / "stack")
    graph = {f.split("__g_")[0] for f in result.importances["feature"] if "__g_" in f}
    assert graph == ({"fused"} if fused_only else {"cnn", "cnn2", "fused"})
    assert result.test["prob"].notna().all()


def test_one_stacker_per_experiment_reads_no_fused_graph(tmp_path, caplog) -> None:
    """``stack.average=rank`` (one stacker per experiment) with graph features: each stacker
    reads its own experiment's graph, and no fused graph is built (no stacker would read it)."""
    import logging
    import shutil

    from src.stacking.stack import run_stack
    from tests.fixtures.graph_inputs import write_graph_inputs

    cfg, _ = write_graph_inputs(tmp_path, trials_per_fold=200, n_test_pairs=100)
    shutil.copytree(cfg.paths.outputs / "cnn", cfg.paths.outputs / "cnn2")
    stack = cfg.stack.model_copy(update={"experiments": ["cnn", "cnn2"], "average": "rank"})
    dirs = [cfg.paths.outputs / "cnn", cfg.paths.outputs / "cnn2"]
    with caplog.at_level(logging.INFO):
        result = run_stack(cfg.model_copy(update={"stack": stack}), dirs, tmp_path / "stack")
    graph = {f.split("__g_")[0] for f in result.importances["feature"] if "__g_" in f}
    assert graph == {"cnn", "cnn2"}
    assert set(result.importances["model"]) == {"cnn", "cnn2"}
    assert "graph features: 2 graphs in" in caplog.text  # not 3: no fused graph
    assert result.test["prob"].notna().all() and result.test["prob"].between(0, 1).all()
    assert "without_graph" in result.metrics
