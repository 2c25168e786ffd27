"The claims each paper's CPU demonstration records in results.json: built from a run's figures, holds computed, never typed."
from vlrepro import crossget, laps, ademvl_sqa

def _holds(cs): return [c['holds'] for c in cs]

def test_laps_demo_claims_hold_and_fail():
    good = laps.demo_claims({'laps': 187.0, 'dense': 259.0}, {'laps': 14, 'dense': 65}, dict(official=0.71, a_txt=0.75, a_img=0.51), 100)
    assert _holds(good) == [True, False, True, True, True, True, True]
    assert good[1]['measured'] == 'rsum 187.0 vs 259.0' and 'chance about 32' in good[2]['claim']
    bad = laps.demo_claims({'laps': 300.0, 'dense': 100.0}, {'laps': 70, 'dense': 65}, dict(official=0.55, a_txt=0.6, a_img=0.3), 100)
    assert _holds(bad) == [False, True, True, False, False, False, False]
    assert bad[6]['measured'] == 'a_img 0.30'
    # off the synthetic scenes: no coverage, no chance level; a LAPS-only run: no comparison with dense
    assert len(laps.demo_claims({'laps': 500.0, 'dense': 450.0}, {'laps': 41, 'dense': 197})) == 2
    assert laps.demo_claims({'laps': 500.0}, {'laps': 41}) == []

def test_crossget_demo_claims_hold_and_fail():
    rows = [dict(setting='base (no reduction)', method='none', rv=0, rl=0, gflops=1.0, rmean=54.6),
            dict(setting='off-the-shelf tome r=24', method='tome', rv=24, rl=0, gflops=0.54, rmean=46.9),
            dict(setting='off-the-shelf complete r=24', method='complete', rv=24, rl=0, gflops=0.56, rmean=54.7),
            dict(setting='off-the-shelf crossget r=8', method='crossget', rv=8, rl=0, gflops=0.86, rmean=53.9),
            dict(setting='off-the-shelf crossget r=16', method='crossget', rv=16, rl=0, gflops=0.67, rmean=53.4),
            dict(setting='fine-tuned crossget rv=16', method='crossget', rv=16, rl=0, gflops=0.67, rmean=56.2),
            dict(setting='fine-tuned crossget rv=16, rl=4', method='crossget', rv=16, rl=4, gflops=0.58, rmean=52.0),
            dict(setting='fine-tuned tome rv=16', method='tome', rv=16, rl=0, gflops=0.62, rmean=55.8)]
    cs = crossget.demo_claims(rows, [5.0, 2.0], [dict(setting='CoOp', acc=30.4), dict(setting='CoOp CrossGET rv=16', acc=27.0)],
                              [('ViT-B/16 rv=16', 12.0365, 12.036), ('ViT-B/16 rv=8', 16.461, 16.46)])
    assert _holds(cs) == [True, True, False, True, True, True, True, False, True]
    assert cs[0]['measured'] == 'GFLOPs ratio 0.86 / 0.67'
    assert cs[2]['measured'] == '46.9 vs 54.6 at 0.54x GFLOPs' and not cs[2]['holds']   # ToMe loses 7.7 points > 2
    assert 'rl' not in ' '.join(c['claim'] for c in cs)                                  # the rl=4 fine-tune is not rv=16's claim
    assert cs[7]['measured'] == '27.0 vs 30.4 %'
    worse = crossget.demo_claims([dict(rows[0]), dict(rows[3], gflops=0.6), dict(rows[4], gflops=0.7)], [2.0, 3.0], (),
                                 [('ViT-B/16 rv=16', 12.05, 12.036)])
    assert _holds(worse) == [False, False, False]                                        # cost not falling, loss rising, table off
    assert crossget.demo_claims([]) == []

def test_ademvl_demo_claims_hold_and_fail():
    r = lambda **s: {'eval': {'scores': dict(dict(TXT=60, NO=60, IMG=40), **s)}}
    runs = {'text-only (frozen LLM)': r(), 'ADEM': r(IMG=50), 'input-space (LLaVA-style)': r(IMG=48),
            'ADEM single scale (64)': r(IMG=45), 'ADEM without CLS': r(IMG=52)}
    cs = ademvl_sqa.demo_claims(runs, 0.5, 2.0)
    assert _holds(cs) == [True, True, True, True, True, True, False]
    assert cs[4]['measured'] == 'IMG 50.0 vs 48.0 (+2.0)'
    bad = ademvl_sqa.demo_claims({'text-only (frozen LLM)': r(TXT=40), 'ADEM': r(IMG=41, NO=50), 'input-space (LLaVA-style)': r(IMG=48)}, 0.6, -7.0)
    assert _holds(bad) == [False, False, False, False, False] and bad[0]['measured'] == '0.60x'
