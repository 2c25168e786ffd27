"Tests of vlrepro.metrics against hand-computed numbers and brute-force references."
import builtins
import math
from itertools import combinations

import numpy as np
import pytest
import torch
from vlrepro import metrics as M

S = np.array([[.9, .1, .8, .2, .3, .0],
              [.7, .2, .1, .6, .5, .4],
              [.1, .6, .3, .2, .4, .9]])


def _argsort_ranks(sim, owner):
    "Reference: stable descending argsort, as the papers' evaluation code does."
    sim = np.asarray(sim)
    n_img, n_txt = sim.shape
    i2t = [min(int(np.flatnonzero(np.argsort(-sim[i], kind='stable') == c)[0]) for c in np.flatnonzero(owner == i))
           for i in range(n_img)]
    t2i = [int(np.flatnonzero(np.argsort(-sim[:, c], kind='stable') == owner[c])[0]) for c in range(n_txt)]
    return i2t, t2i


def test_hand_example():
    i2t, t2i = M.retrieval_ranks(S, 2)
    assert i2t.tolist() == [0, 1, 0] and t2i.tolist() == [0, 2, 2, 0, 1, 0]
    r = M.recall_at_k(S, 2, ks=(1, 2))
    assert r['i2t_r1'] == pytest.approx(200 / 3) and r['i2t_r2'] == 100 and r['t2i_r1'] == 50
    assert r['t2i_r2'] == pytest.approx(400 / 6) and r['rsum'] == pytest.approx(850 / 3)
    assert r['i2t_rmean'] == pytest.approx((200 / 3 + 100) / 2) and r['rmean'] == pytest.approx((r['i2t_rmean'] + r['t2i_rmean']) / 2)
    assert (r['i2t_medr'], r['t2i_medr']) == (1.0, 1.0)
    assert r['i2t_meanr'] == pytest.approx(4 / 3) and r['t2i_meanr'] == pytest.approx(11 / 6)
    assert set(M.recall_at_k(S, 2)) >= {'i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10', 'rsum'}


@pytest.mark.parametrize('seed,quantise', [(0, False), (1, True), (2, True)])
def test_ranks_match_stable_argsort(seed, quantise):
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=(9, 27))
    if quantise: sim = np.round(sim, 0)  # many ties
    owner = np.arange(27) // 3
    i2t, t2i = M.retrieval_ranks(sim, 3, chunk=4)
    ref_i2t, ref_t2i = _argsort_ranks(sim, owner)
    assert i2t.tolist() == ref_i2t and t2i.tolist() == ref_t2i


def test_variable_captions_and_torch_input():
    rng = np.random.default_rng(3)
    own = [[0, 4], [1], [2, 3, 5, 6]]
    owner = np.array([0, 1, 2, 2, 0, 2, 2])
    sim = rng.normal(size=(3, 7))
    i2t, t2i = M.retrieval_ranks(torch.tensor(sim, dtype=torch.float32), own)
    assert [i2t.tolist(), t2i.tolist()] == [list(x) for x in _argsort_ranks(sim.astype(np.float32), owner)]
    assert M.caption_owner(own, 3, 7).tolist() == owner.tolist()


def test_caption_errors():
    with pytest.raises(ValueError, match='pass the caption indices'):
        M.retrieval_ranks(S, 5)
    with pytest.raises(ValueError, match='owned by'):
        M.retrieval_ranks(S, [[0, 1], [1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match='owns no caption'):
        M.retrieval_ranks(S, [[0, 1, 2], [], [3, 4, 5]])
    with pytest.raises(ValueError, match='rows'):
        M.retrieval_ranks(S, [[0, 1], [2, 3, 4, 5]])
    with pytest.raises(ValueError, match='N_img, N_txt'):
        M.retrieval_ranks(np.zeros(3), 1)


def test_folds_equal_mean_of_blocks_and_dominate_pooled():
    rng = np.random.default_rng(4)
    sim = rng.normal(size=(10, 50))
    folds = M.recall_at_k_folds(sim, 5, n_folds=2)
    a, b = M.recall_at_k(sim[:5, :25], 5), M.recall_at_k(sim[5:, 25:], 5)
    assert folds == pytest.approx({k: (a[k] + b[k]) / 2 for k in a})
    pooled = M.recall_at_k(sim, 5)
    for k in ['i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10', 'rsum']:
        assert pooled[k] <= folds[k] + 1e-9
    with pytest.raises(ValueError, match='equal folds'):
        M.recall_at_k_folds(sim, 5, n_folds=3)


def test_coco_sized_chunks_fast_enough():
    sim = torch.randn(500, 2500)
    r = M.recall_at_k_folds(sim, 5, n_folds=5)
    assert 0 <= r['i2t_r1'] <= 100


@pytest.mark.parametrize('raw,want', [
    ('Two dogs.', '2 dogs'), ('The cat', 'cat'), ('dont know', "don't know"), ('10,000', '10000'), ('3.5', '3.5'),
    ('ice-cream', 'ice cream'), ('Yes!', 'yes'), ('at 2:50 pm', 'at 2:50 pm'), ("girl's", "girl's"),
    (' A  red\tone ', 'red 1'), ('an apple', 'apple'), ('its', 'its'), ('Isnt it?', "isn't it"), ('none', '0'),
    ('end.', 'end'), ('$5', '5'), ('.5 m', '.5 m'), ('a.m.', 'am')])
def test_normalize_answer(raw, want):
    assert M.normalize_answer(raw) == want


def test_vqa_soft_accuracy():
    humans = ['2', '2', 'two', '3', '3', '3', '4', '4', '4', '4']
    assert M.vqa_accuracy('Two', humans) == pytest.approx(0.9)
    assert M.vqa_accuracy('4', humans) == 1.0 and M.vqa_accuracy('5', humans) == 0.0
    for m in range(11):
        hits = [1] * m + [0] * (10 - m)
        brute = np.mean([min(sum(s) / 3, 1) for s in combinations(hits, 9)])
        assert M.vqa_soft_score(m) == pytest.approx(brute)
    assert [round(M.vqa_soft_score(m), 6) for m in range(5)] == [0, 0.3, 0.6, 0.9, 1.0]
    with pytest.raises(ValueError, match='count'):
        M.vqa_soft_score(11)
    vs = M.vqa_score(['Two', 'yes', 'no'], [humans, ['yes'] * 10, ['yes'] * 9 + ['no']], ['number', 'yes/no', 'yes/no'])
    assert vs == pytest.approx({'accuracy': 100 * 2.2 / 3, 'number': 90.0, 'yes/no': 65.0})
    with pytest.raises(ValueError, match='predictions'):
        M.vqa_score(['a'], [])


def _problems():
    subj = ['natural science', 'natural science', 'social science', 'language science', 'language science', 'natural science']
    return [dict(subject=s, hint=h, image=i, grade=f'grade{g}', answer=1)
            for s, h, i, g in zip(subj, ['a hint', '', 'b', '', '', 'c'], ['0.png', '1.png', None, None, None, None],
                                  [3, 8, 5, 2, 10, 12])]


def test_scienceqa_hand_example():
    acc = M.scienceqa_accuracy([1, 0, 1, 1, -1, 1], _problems())
    want = {'NAT': 200 / 3, 'SOC': 100, 'LAN': 50, 'TXT': 100, 'IMG': 50, 'NO': 50, 'G1-6': 100, 'G7-12': 100 / 3,
            'Avg': 200 / 3}
    assert list(acc) == M.SQA_CATEGORIES and acc == pytest.approx(want)


def test_scienceqa_data_module_shape():
    # rows as vlrepro.data writes them: has_image wins over image; integer grades; 'context' as the hint key
    rows = [dict(subject='social science', hint='', has_image=False, image='x.png', grade=7, answer=0),
            dict(subject='social science', context='ctx', has_image=True, grade='grade 2', answer=2)]
    cats = M.scienceqa_categories(rows)
    assert cats['IMG'].tolist() == [False, True] and cats['TXT'].tolist() == [False, True]
    assert cats['NO'].tolist() == [True, False] and cats['G7-12'].tolist() == [True, False]
    with pytest.raises(ValueError, match='unknown subject'):
        M.scienceqa_categories([dict(subject='maths', hint='', grade=1)])


def test_bleu_and_cider_by_hand():
    pytest.importorskip('pycocoevalcap')
    b = M.caption_scores(['A red circle on the right.'], [['a red circle on the left']], metrics=('bleu4',), tokenizer='simple')
    assert b['bleu4'] == pytest.approx(100 * (1 / 3) ** 0.25, rel=1e-6)
    refs = [['red circle on left'], ['two blue squares here']]
    c = M.caption_scores(['Red circle on left.', 'green star far away'], refs, metrics=('cider', 'bleu1'), tokenizer='simple')
    assert c['cider'] == pytest.approx(500.0) and list(c) == ['cider', 'bleu1']
    d = M.caption_scores({'x': 'red circle on left', 'y': 'two blue squares here'}, {'x': refs[0], 'y': refs[1]},
                         metrics=('cider',), tokenizer='simple')
    assert d['cider'] == pytest.approx(1000.0)


CAPS = ["A man riding a horse.", "Two dogs, playing in the snow!", "The cat's toy is under the table.",
        "He doesn't like ice-cream; really?", "A (small) red circle at 10:30 on the left...",
        'A "big" blue square -- next to 3.5 triangles', "people walk by a store's sign that says 'open'",
        "a 10,000 dollar car", "Can't stop won't stop", "kids' toys & games at 50% off",
        "I'm here, you're there, we'll see", "U.S. flag on a pole", "$5 pizza #1", "a [boxed] {word}"]


@pytest.mark.skipif(not M.java_available(), reason='needs java for the PTB tokenizer')
def test_simple_tokenizer_matches_ptb():
    pytest.importorskip('pycocoevalcap')
    assert M._ptb_java(CAPS) == [M.simple_ptb_tokenize(c) for c in CAPS]
    refs = [[c, c.upper()] for c in CAPS]
    preds = [CAPS[(i + 1) % len(CAPS)] if i % 3 else c for i, c in enumerate(CAPS)]
    assert M.caption_scores(preds, refs, tokenizer='ptb') == pytest.approx(M.caption_scores(preds, refs, tokenizer='simple'))


def test_caption_errors(monkeypatch):
    pytest.importorskip('pycocoevalcap')
    with pytest.raises(ValueError, match='no reference'):
        M.caption_scores(['x'], [[]], tokenizer='simple')
    with pytest.raises(ValueError, match='unknown caption metric'):
        M.caption_scores(['x'], [['x']], metrics=('spice',))
    with pytest.raises(TypeError, match='list of reference captions'):
        M.caption_scores(['x'], ['x'], tokenizer='simple')
    with pytest.raises(TypeError, match='strings'):
        M.caption_scores([3], [['x']], tokenizer='simple')
    monkeypatch.setattr(M, 'java_available', lambda: False)
    with pytest.raises(RuntimeError, match="tokenizer='simple'"):
        M.caption_scores(['x'], [['x']], tokenizer='ptb')
    assert M.caption_scores(['a b c d'], [['a b c d']], metrics=('bleu4',))['bleu4'] == pytest.approx(100.0)  # auto -> simple


def test_caption_missing_package_message(monkeypatch):
    real = builtins.__import__
    def fake(name, *a, **k):
        if name.startswith('pycocoevalcap'): raise ImportError('no pycocoevalcap')
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, '__import__', fake)
    with pytest.raises(ImportError, match=r'pip install .vlrepro\[captions\]'):
        M.caption_scores(['x'], [['x']])


def test_winoground():
    wg = M.winoground_scores([[[.9, .2], [.1, .8]], [[.9, .5], [.7, .6]], [[.5, .5], [.1, .9]]])
    assert wg == pytest.approx({'text': 100 / 3, 'image': 100.0, 'group': 100 / 3})
    assert M.winoground_scores(torch.ones(4, 2, 2)) == {'text': 0.0, 'image': 0.0, 'group': 0.0}  # ties are wrong
    rng = np.random.default_rng(0)
    chance = M.winoground_scores(rng.random((20000, 2, 2)))
    assert abs(chance['text'] - 25) < 1.5 and abs(chance['image'] - 25) < 1.5 and abs(chance['group'] - 100 / 6) < 1.5
    with pytest.raises(ValueError, match=r'\(N, 2, 2\)'):
        M.winoground_scores(np.zeros((2, 2, 3)))


def test_correlations_against_references():
    rng = np.random.default_rng(1)
    h, m = rng.integers(1, 6, 40).astype(float), np.round(rng.normal(size=40), 1)
    scipy_stats = pytest.importorskip('scipy.stats')
    assert M.kendall_tau_b(h, m) == pytest.approx(scipy_stats.kendalltau(h, m).statistic)
    assert M.pearson(h, m) == pytest.approx(scipy_stats.pearsonr(h, m).statistic)
    assert M.kendall_tau_b([1, 2, 2, 3], [.1, .3, .35, .9]) == pytest.approx(5 / math.sqrt(30))


def test_pairwise_accuracy_tie_calibration():
    assert M.pairwise_accuracy([1, 2, 2, 3], [.1, .3, .35, .9]) == pytest.approx(1.0)
    assert M.pairwise_accuracy([1, 2, 2, 3], [.1, .3, .35, .2]) == pytest.approx(4 / 6)
    assert M.pairwise_accuracy([1, 2, 3], [3, 2, 1]) == 0.0
    assert M.pairwise_accuracy([1, 1, 1], [5, 5, 5]) == 1.0
    rng = np.random.default_rng(2)
    for _ in range(5):
        h, m = rng.integers(0, 3, 15).astype(float), np.round(rng.normal(size=15), 1)
        i, j = np.triu_indices(15, 1)
        dh, dm = np.sign(h[i] - h[j]), m[i] - m[j]
        brute = max(((abs(dm) <= e) & (dh == 0)).sum() + ((abs(dm) > e) & (dh * np.sign(dm) > 0)).sum()
                    for e in np.r_[0, abs(dm)]) / len(i)
        assert M.pairwise_accuracy(h, m) == pytest.approx(brute)


def test_auc_preference_rank():
    assert M.roc_auc([.1, .4, .35, .8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert M.roc_auc([.5, .5], [0, 1]) == 0.5
    with pytest.raises(ValueError, match='positive'):
        M.roc_auc([1, 2], [0, 0])
    assert M.preference_accuracy([.9, .2, .5], [.1, .3, .5], [0, 1, 1]) == pytest.approx(200 / 3)
    assert M.rank_accuracy([[1, 5, 3], [2, 1, 4]], [[.1, .9, .5], [.3, .6, .2]]) == 50.0
    with pytest.raises(ValueError, match=r'\(P, K\)'):
        M.rank_accuracy([1, 2], [1, 2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_ranks_on_cuda_match_cpu():
    sim = torch.randn(50, 250)
    cpu = M.retrieval_ranks(sim, 5)
    gpu = M.retrieval_ranks(sim.cuda().half(), 5)
    ref = M.retrieval_ranks(sim.half().float(), 5)
    assert all((a == b).all() for a, b in zip(gpu, ref)) and cpu[0].shape == gpu[0].shape


def test_pope():
    pope = M.pope_scores(['Yes, there is.', 'No.', 'There is not a dog.', 'yes', 'Yes'], ['yes', 'yes', 'no', 'no', 'yes'])
    assert pope == pytest.approx({'accuracy': 60.0, 'precision': 200 / 3, 'recall': 200 / 3, 'f1': 200 / 3, 'yes_ratio': 60.0})
    assert M.pope_scores(['no', 'no'], ['no', 'no'])['f1'] == 0.0  # no positives predicted or present
    assert M.parse_yes_no('No') == 'no' and M.parse_yes_no('nothing') == 'yes' and M.parse_yes_no('It is not, no') == 'no'
    with pytest.raises(ValueError, match='labels'):
        M.pope_scores(['yes'], ['maybe'])
    with pytest.raises(ValueError, match='answers'):
        M.pope_scores(['yes'], [])


def test_parse_choice_styles_follow_each_official_rule():
    assert [M.parse_choice('B. red', 3, s) for s in M.CHOICE_STYLES] == [1, 1, -1, 1, 1]
    assert M.parse_choice('The answer is B.', 3, 'lavin') == 1 and M.parse_choice('A. or B.', 3, 'lavin') == -1
    assert M.parse_choice('The', 3, 'adem') == -1 and M.parse_choice('AB', 3, 'adem') == 0 and M.parse_choice('AB', 3, 'strict') == -1
    assert M.parse_choice('', 4, 'llava') == -1                      # an empty answer is not option A
    with pytest.raises(ValueError, match='lavin_language'): M.parse_choice('A', 2, 'lenient')


def test_mme_scores_by_hand_both_yes_no_rules():
    preds, labels, ims = ['Yes', 'No', 'yes, it is', 'I think no'], ['yes', 'no', 'yes', 'no'], ['a', 'a', 'b', 'b']
    assert M.mme_scores(preds, labels, ims, ['count'] * 4)['count'] == 75 + 50       # 'I think no' does not start with no
    sc = M.mme_scores(preds, labels, ims, ['count', 'count', 'code_reasoning', 'code_reasoning'], 'adem')
    assert (sc['count'], sc['code_reasoning'], sc['perception'], sc['cognition']) == (200, 50 + 0, 200, 50)
