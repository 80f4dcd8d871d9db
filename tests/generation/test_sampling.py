import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hf_adaptive_decoding import ACTION_PRESETS, ActionTransform, DecodingAction, NonFiniteLogitsError
from hf_adaptive_decoding.generation.sampling import UNCONFINED_WINDOW, check_logits_are_finite


def transformers_reference(scores: torch.Tensor, action: DecodingAction) -> torch.Tensor:
    """What generate() does for one static action: greedy = argmax; else its warpers, in its order."""
    if not action.do_sample:
        argmax = scores.argmax(-1, keepdim=True)
        return torch.full_like(scores, -float("inf")).scatter(1, argmax, scores.gather(1, argmax))
    warpers = LogitsProcessorList()
    if action.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(action.temperature))
    if action.top_k:
        warpers.append(TopKLogitsWarper(action.top_k))
    if action.top_p:
        warpers.append(TopPLogitsWarper(action.top_p))
    if action.min_p:
        warpers.append(MinPLogitsWarper(action.min_p))
    return warpers(None, scores)


def logits(rows=16, vocab=2048, scale=4.0, seed=0):
    # heavy-tailed logits like a real LM's: a few likely tokens, a long flat tail
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, vocab, generator=generator) * scale
    return base + torch.distributions.Gumbel(0.0, 2.0).sample((rows, vocab))


@pytest.mark.parametrize("preset", sorted(ACTION_PRESETS))
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_every_preset_action_matches_transformers_warpers_exactly(preset, scale):
    actions = ACTION_PRESETS[preset][1]()
    transform = ActionTransform(actions)
    scores = logits(scale=scale, seed=int(scale))
    for index, action in enumerate(actions):
        ours = transform(scores, torch.full((scores.shape[0],), index))
        assert torch.equal(ours, transformers_reference(scores, action)), action.name


@pytest.mark.parametrize("preset", ["math-seq", "mixed-seq", "code-seq", "math-token"])
def test_rows_with_different_actions_in_one_batch(preset):
    actions = ACTION_PRESETS[preset][1]()
    transform = ActionTransform(actions)
    scores = logits(rows=24, seed=3)
    action_ids = torch.arange(24) % len(actions)
    ours = transform(scores, action_ids)
    for row in range(24):
        expected = transformers_reference(scores[row : row + 1], actions[action_ids[row]])
        assert torch.equal(ours[row : row + 1], expected), (row, actions[action_ids[row]].name)


def test_full_default_vocabulary():
    actions = ACTION_PRESETS["mixed-seq"][1]()
    scores = logits(rows=4, vocab=49152, seed=5)
    ours = ActionTransform(actions)(scores, torch.tensor([4, 3, 5, 0]))
    for row, index in enumerate([4, 3, 5, 0]):
        assert torch.equal(ours[row : row + 1], transformers_reference(scores[row : row + 1], actions[index]))


def test_greedy_rows_keep_only_the_argmax_and_input_is_untouched():
    scores = logits(rows=3)
    before = scores.clone()
    out = ActionTransform([DecodingAction(do_sample=False), DecodingAction(temperature=0.5)])(
        scores, torch.tensor([0, 1, 0])
    )
    assert torch.equal(scores, before)
    assert (torch.isfinite(out[0]).sum(), torch.isfinite(out[2]).sum()) == (1, 1)
    assert out[0].argmax() == scores[0].argmax()
    assert torch.isfinite(out[1]).all()


def test_window_sizes():
    assert ActionTransform(ACTION_PRESETS["math-token"][1]()).window == 0  # greedy + temperature: no window at all
    assert ActionTransform([DecodingAction(top_k=10, top_p=0.9), DecodingAction(top_k=50)]).window == 50
    # top-p / min-p without top-k: look in the best UNCONFINED_WINDOW tokens first
    assert ActionTransform(ACTION_PRESETS["math-seq"][1]()).window == UNCONFINED_WINDOW


def test_min_p_without_top_k_matches():
    actions = [DecodingAction(temperature=1.0, min_p=0.05), DecodingAction(temperature=0.3)]
    transform = ActionTransform(actions)
    scores = logits(rows=8, scale=0.5)
    for index, action in enumerate(actions):
        assert torch.equal(transform(scores, torch.full((8,), index)), transformers_reference(scores, action))


def test_rows_whose_cut_is_beyond_the_window_fall_back_to_a_full_sort(monkeypatch):
    """Flat rows have a nucleus of thousands of tokens: they are sorted, the peaked rows are not."""
    actions = [DecodingAction(top_p=0.9), DecodingAction(temperature=1.25, top_p=0.95, min_p=0.001)]
    transform = ActionTransform(actions)
    scores = logits(rows=6, vocab=4096, scale=4.0)
    scores[[1, 4]] *= 0.01  # nearly uniform rows
    sorted_rows = []
    original_sort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda x, **kw: sorted_rows.append(x.shape[0]) or original_sort(x, **kw))
    action_ids = torch.tensor([0, 0, 1, 1, 1, 0])
    out = transform(scores, action_ids)
    assert sorted_rows == [2]
    assert torch.isfinite(out[1]).sum() > UNCONFINED_WINDOW and torch.isfinite(out[4]).sum() > UNCONFINED_WINDOW
    for row, index in enumerate(action_ids.tolist()):
        assert torch.equal(out[row : row + 1], transformers_reference(scores[row : row + 1], actions[index])), row


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), "all-masked"])
def test_invalid_rows_raise_a_clear_error(poison):
    scores = logits(rows=4)
    if poison == "all-masked":
        scores[2] = -float("inf")
    else:
        scores[2, 7] = poison
    scores[1, :100] = -float("inf")  # partially masked rows are fine
    transform = ActionTransform(ACTION_PRESETS["math-token"][1]())
    with pytest.raises(NonFiniteLogitsError, match=r"row\(s\) \[2\] at generation step 3"):
        check_logits_are_finite(scores, step=3)
    transform(scores[:2], torch.tensor([1, 2]))  # the valid rows transform without error


def kept(logits: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(logits).sum(dim=-1)


@pytest.mark.parametrize(
    "row, action, expected",
    [
        ([2.0, 1.0, 1.0, 1.0, 0.0], DecodingAction(top_p=0.6), 2),  # top-p cuts by position, inside a tie
        ([3.0, 1.0, 1.0, 1.0], DecodingAction(top_k=2, top_p=0.8), 2),  # top-k keeps the tie, top-p then cuts it
        ([3.0, 1.0, 1.0, 1.0], DecodingAction(top_k=2), 4),  # top-k alone keeps every token tied with the k-th
        ([1.0, 3.0, 3.0, 0.0], DecodingAction(do_sample=False), 1),  # greedy: the first argmax only
    ],
)
def test_ties_are_cut_as_transformers_cuts_them(row, action, expected):
    scores = torch.tensor([row])
    ours = ActionTransform([action, DecodingAction(temperature=0.5, top_k=50)])(scores, torch.tensor([0]))
    assert kept(ours).item() == kept(transformers_reference(scores, action)).item() == expected
    if not action.do_sample:
        assert torch.isfinite(ours[0, 1]) and not torch.isfinite(ours[0, 2])


def test_bf16_like_logits_keep_as_many_tokens_as_transformers():
    """bf16 models give fp32 logits with many exact ties; ties beyond a top-k window trigger the full sort."""
    scores = logits(rows=32, vocab=4096, scale=2.0, seed=9).bfloat16().float()
    actions = [
        DecodingAction(top_p=0.9),
        DecodingAction(top_p=0.95),
        DecodingAction(temperature=1.25, top_k=50, top_p=0.9),
    ]
    transform = ActionTransform(actions)
    for index, action in enumerate(actions):
        ours = transform(scores, torch.full((32,), index))
        reference = transformers_reference(scores, action)
        assert torch.equal(kept(ours), kept(reference)), action.name
        # the kept sets may differ only in which of several exactly tied tokens survive
        torch.testing.assert_close(ours.softmax(-1).sort(-1).values, reference.softmax(-1).sort(-1).values)


def test_half_precision_temperature_divides_like_transformers():
    scores = logits(rows=4, vocab=512).bfloat16()
    ours = ActionTransform([DecodingAction(temperature=0.3)])(scores, torch.zeros(4, dtype=torch.long))
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, TemperatureLogitsWarper(0.3)(None, scores))


@pytest.mark.parametrize("actions", [[], ["greedy"]])
def test_bad_action_lists_are_refused(actions):
    with pytest.raises(ValueError, match="non-empty list of DecodingAction"):
        ActionTransform(actions)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that equality also tells -0.0 from 0.0 and compares NaN payloads."""
    return tensor.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def masked_logits(rows=8, vocab=1000, seed=11) -> torch.Tensor:
    scores = logits(rows=rows, vocab=vocab, seed=seed)
    scores[1, ::3] = -float("inf")  # a logits processor's mask
    scores[2, :] = 0.0  # a row of exact ties, with a negative zero first
    scores[2, 0] = -0.0
    return scores


@pytest.fixture(params=[True, False], ids=["by-index", "by-mask"])
def by_index(request, monkeypatch):
    """Both ways of picking rows: by `nonzero` indices (CPU default) and by row masks (the sync-free default)."""
    monkeypatch.setattr(ActionTransform, "by_index", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_greedy_and_temperature_sets_skip_the_window_and_match_the_general_path_bit_for_bit(dtype, by_index):
    actions = ACTION_PRESETS["math-token"][1]()
    fast = ActionTransform(actions)
    general = ActionTransform(actions + [DecodingAction(top_k=50)])  # one truncating action: the windowed path
    assert not fast.windowed and general.windowed
    scores = masked_logits().to(dtype)
    action_ids = torch.tensor([0, 0, 0, 1, 2, 3, 1, 0])
    ours = fast(scores, action_ids)
    assert ours.dtype == dtype
    assert torch.equal(bits(ours), bits(general(scores, action_ids)))
    for row, index in enumerate(action_ids.tolist()):
        action = actions[index]
        if action.do_sample:
            expected = TemperatureLogitsWarper(action.temperature)(None, scores[row : row + 1])
        else:
            expected = transformers_reference(scores[row : row + 1], action)
        assert torch.equal(bits(ours[row : row + 1]), bits(expected)), (row, action.name)


def test_greedy_and_temperature_sets_never_sort(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no window or sort for greedy and temperature rows")

    monkeypatch.setattr(torch, "topk", refuse)
    monkeypatch.setattr(torch, "sort", refuse)
    ActionTransform(ACTION_PRESETS["math-token"][1]())(logits(rows=8), torch.arange(8) % 4)


@pytest.mark.parametrize("vocab", [5, 256, 1000, 49152])
def test_greedy_rows_keep_only_the_first_argmax(vocab, by_index):
    transform = ActionTransform([DecodingAction(do_sample=False), DecodingAction(temperature=0.5)])
    scores = logits(rows=6, vocab=vocab, seed=vocab)
    top = scores.max() + 1.0
    ties = [(0, [1, 2]), (1, [vocab // 3, vocab // 2, vocab - 1]), (2, [vocab - 1]), (3, [0, vocab - 1])]
    for row, positions in ties:  # ties inside a chunk, across chunks, in the short last chunk
        scores[row, positions] = top
    scores[4, : vocab // 2] = -float("inf")
    scores[5] = 0.0
    scores[5, :2] = -0.0  # -0.0 == 0.0: the first of them is the argmax, and keeps its sign
    before = scores.clone()
    out = transform(scores, torch.zeros(6, dtype=torch.long))
    assert torch.equal(bits(scores), bits(before))
    assert torch.equal(kept(out), torch.ones(6, dtype=torch.long))
    argmax = scores.argmax(dim=-1)
    assert torch.equal(torch.isfinite(out).nonzero()[:, 1], argmax)
    assert argmax[:4].tolist() == [positions[0] for _, positions in ties]
    assert torch.equal(bits(out.gather(1, argmax[:, None])), bits(scores.gather(1, argmax[:, None])))
    mixed = transform(scores, torch.tensor([0, 1, 0, 1, 0, 1]))  # the temperature rows are divided, not cut
    assert torch.equal(mixed[1::2], TemperatureLogitsWarper(0.5)(None, scores[1::2]))
    assert torch.equal(mixed[::2], out[::2])


@pytest.mark.parametrize("preset", ["math-token", "mixed-seq"])
def test_non_finite_rows_raise_from_the_transform(preset, by_index):
    scores = logits(rows=4)
    scores[1, 3] = float("nan")
    with pytest.raises(NonFiniteLogitsError, match=r"row\(s\) \[1\] at generation step 5"):
        ActionTransform(ACTION_PRESETS[preset][1]())(scores, torch.tensor([0, 1, 2, 3]), step=5)


@pytest.mark.parametrize("gather_below", [1.0, -1.0], ids=["truncating-rows-gathered", "whole-batch-windowed"])
def test_few_truncating_rows_are_windowed_on_their_own(gather_below, by_index, monkeypatch):
    """Only the top-p rows go through the window (flat ones to the full sort); the others are divided or greedy."""
    from hf_adaptive_decoding.generation import sampling

    monkeypatch.setattr(sampling, "GATHER_BELOW", gather_below)
    actions = [DecodingAction(temperature=0.5), DecodingAction(do_sample=False), DecodingAction(top_p=0.9)]
    transform = ActionTransform(actions)
    scores = logits(rows=8, vocab=4096, scale=4.0)
    scores[[3, 6]] *= 0.01  # nearly uniform: their nucleus lies beyond the window
    action_ids = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])
    before = scores.clone()
    windowed_rows = []
    real_truncate = ActionTransform._truncate
    spy = lambda self, out, table, full_sort=False: (  # noqa: E731
        windowed_rows.append(out.shape[0]) or real_truncate(self, out, table, full_sort)
    )
    monkeypatch.setattr(ActionTransform, "_truncate", spy)
    out = transform(scores, action_ids)
    assert torch.equal(scores, before)
    gathered = by_index and gather_below > 0
    assert windowed_rows == ([3, 2] if gathered else [8, 2])
    for row, index in enumerate(action_ids.tolist()):
        assert torch.equal(out[row : row + 1], transformers_reference(scores[row : row + 1], actions[index])), row
