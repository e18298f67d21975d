// Closed loop with k6: VUS clients, each posting one test sentence per request, back to back.
// Driven by `python -m bench.compare`: URL, POLICY ('' = none sent), DURATION (s), VUS, TEXTS
// (a JSON file of [text, gold label id] pairs), KIND ('eeserve' or 'infinity'), LABELS (JSON
// list of label names, to map infinity's label names to ids).
import http from 'k6/http';
import { Rate, Trend, Counter } from 'k6/metrics';

const rows = JSON.parse(open(__ENV.TEXTS));
const correct = new Rate('correct');
const okLatency = new Trend('ok_latency', true);
const failed = new Counter('failed');

export const options = {
  scenarios: { loop: { executor: 'constant-vus', vus: Number(__ENV.VUS),
                       duration: `${__ENV.DURATION}s` } },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

function body(text) {
  if (__ENV.KIND === 'infinity') return JSON.stringify({ model: 'peer', input: [text] });
  const b = { inputs: text };
  if (__ENV.POLICY) b.policy = __ENV.POLICY;
  return JSON.stringify(b);
}

function label(r) {
  const j = r.json();
  if (__ENV.KIND === 'infinity') {  // [[{label, score}, ...]]: the best-scored label's id
    const best = j.data[0].reduce((a, b) => (b.score > a.score ? b : a));
    const names = JSON.parse(__ENV.LABELS || '[]');
    const i = names.indexOf(best.label);
    return i >= 0 ? i : Number(String(best.label).replace(/^LABEL_/, ''));
  }
  return j.results[0].label_id;
}

export default function () {
  const [text, gold] = rows[(__VU * 7919 + __ITER) % rows.length];
  const path = __ENV.KIND === 'infinity' ? '/classify' : '/v1/classify';
  const r = http.post(`${__ENV.URL}${path}`, body(text),
                      { headers: { 'Content-Type': 'application/json' }, timeout: '30s' });
  if (r.status !== 200) { failed.add(1); return; }
  okLatency.add(r.timings.duration);
  correct.add(label(r) === gold);
}
