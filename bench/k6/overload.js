// Overload with k6 (Go; far cheaper per request than a Python client on 2 cores).
// Driven by `python -m bench.overload`: URL, POLICY, TIMEOUT (s), DURATION (s), and
//   MODE=open:   constant-rate arrivals at RATE req/s (clients that never back off), or
//   MODE=closed: VUS clients that send again as soon as an answer (a 429 too) arrives,
//                ignoring Retry-After: the harshest flood a fixed client pool can make.
// DEADLINE_MS > 0: each request carries `deadline_ms`; an answer counts as good when it is a
// 200 within that deadline (measured by the client).
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';

const statuses = {};
for (const s of ['200', '429', '504', '503', '500', '400', '0', 'other']) {
  statuses[s] = new Counter(`status_${s}`);
}
const okLatency = new Trend('ok_latency', true);
const goodAnswers = new Counter('good_in_deadline');
const noRetryAfter = new Counter('status_429_without_retry_after');
const deadlineMs = Number(__ENV.DEADLINE_MS || 0);
const texts = [
  'a gorgeous, witty, seductive movie.', 'the plot is nothing but boilerplate',
  'an admirable but ultimately dull effort', 'funny, touching and smart',
  'i walked out halfway', 'a rare film that earns its tears',
];

const scenario = (__ENV.MODE || 'open') === 'closed'
  ? { executor: 'constant-vus', vus: Number(__ENV.VUS || 200), duration: `${__ENV.DURATION}s` }
  : { executor: 'constant-arrival-rate', rate: Number(__ENV.RATE), timeUnit: '1s',
      duration: `${__ENV.DURATION}s`, preAllocatedVUs: 200, maxVUs: 2000 };

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
  scenarios: { overload: scenario },
};

export default function () {
  const req = { inputs: texts[Math.floor(Math.random() * texts.length)], policy: __ENV.POLICY };
  if (deadlineMs > 0) req.deadline_ms = deadlineMs;
  const r = http.post(`${__ENV.URL}/v1/classify`, JSON.stringify(req), {
    headers: { 'Content-Type': 'application/json' }, timeout: `${__ENV.TIMEOUT}s` });
  const key = String(r.status) in statuses ? String(r.status) : 'other';
  statuses[key].add(1);
  if (r.status === 200) {
    okLatency.add(r.timings.duration);
    if (deadlineMs <= 0 || r.timings.duration <= deadlineMs) goodAnswers.add(1);
  }
  if (r.status === 429 && !r.headers['Retry-After']) noRetryAfter.add(1);
}
