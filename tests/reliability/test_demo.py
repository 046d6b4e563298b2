"""`analogformer demo` shows something true (issue: it printed embedding cosines of 0.03,
below those of unrelated sentences: noise, not drift). It now reads one real MiniLM matrix
on tiles; the physics it prints must hold."""
import re

from analogformer import demo


def test_the_demo_shows_drift_compensation_and_the_error_sources():
    text = demo.run(instances=3)
    rows = {m[1]: (float(m[2]), float(m[3])) for m in
            re.finditer(r"^\s+(1 s|1 hour|1 day|1 week|1 month) \|\s+([\d.]+) ± [\d.]+ \|\s+([\d.]+) ±", text, re.M)}
    assert list(rows) == ["1 s", "1 hour", "1 day", "1 week", "1 month"]
    nocomp, comp = zip(*rows.values())
    assert list(nocomp) == sorted(nocomp) and nocomp[-1] > nocomp[0] + 0.05  # drift grows the error
    assert all(c <= n for c, n in zip(comp[1:], nocomp[1:]))  # compensation never hurts after 1 s
    assert nocomp[-1] - comp[-1] > 0.03
    sources = dict(re.findall(r"^\s+(input DAC|output ADC|output noise|programming noise|read noise)[^|]*\| ([\d.]+)",
                              text, re.M))
    assert len(sources) == 5 and all(0 < float(v) < rows["1 s"][0] for v in sources.values())
