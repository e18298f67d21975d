// Open-loop overload with k6 (Go; far cheaper per request than a Python client on 2 cores).
// Driven by scripts/overload.py: RATE (req/s), DURATION (s), URL, POLICY, TIMEOUT (s).
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';

const statuses = {};
for (const s of ['200', '429', '504', '503', '500', '400', '0', 'other']) {
  statuses[s] = new Counter(`status_${s}`);
}
const okLatency = new Trend('ok_latency', true);
const noRetryAfter = new Counter('status_429_without_retry_after');
const texts = [
  'a gorgeous, witty, seductive movie.', 'the plot is nothing but boilerplate',
  'an admirable but ultimately dull effort', 'funny, touching and smart',
  'i walked out halfway', 'a rare film that earns its tears',
];

export const options = {
  discardResponseBodies: true,
  scenarios: {
    overload: {
      executor: 'constant-arrival-rate', rate: Number(__ENV.RATE), timeUnit: '1s',
      duration: `${__ENV.DURATION}s`, preAllocatedVUs: 200, maxVUs: 2000,
    },
  },
};

export default function () {
  const body = JSON.stringify({ inputs: texts[Math.floor(Math.random() * texts.length)],
                                policy: __ENV.POLICY });
  const r = http.post(`${__ENV.URL}/v1/classify`, body, {
    headers: { 'Content-Type': 'application/json' }, timeout: `${__ENV.TIMEOUT}s` });
  const key = String(r.status) in statuses ? String(r.status) : 'other';
  statuses[key].add(1);
  if (r.status === 200) okLatency.add(r.timings.duration);
  if (r.status === 429 && !r.headers['Retry-After']) noRetryAfter.add(1);
}
