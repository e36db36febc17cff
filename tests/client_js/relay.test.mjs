// Unit tests of the relay sender's video adaptation (static/js/relay.js, DOM-free parts):
//   node --test tests/client_js/
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { VIDEO_LADDER, VideoLadder } from '../../static/js/relay.js';

test('the ladder gets cheaper at every step, and audio is not on it', () => {
  for (let i = 1; i < VIDEO_LADDER.length; i++) {
    const [a, b] = [VIDEO_LADDER[i - 1], VIDEO_LADDER[i]];
    assert.ok(b.share < a.share && b.fps < a.fps && b.scale > a.scale, JSON.stringify([a, b]));
  }
});

test('one drop is not enough; repeated drops step down, not faster than every 2 s', () => {
  const l = new VideoLadder();
  assert.equal(l.report(0), false);
  assert.equal(l.level, 0);
  assert.equal(l.report(500), true);
  assert.equal(l.level, 1);
  // more trouble right away: no second step within 2 s
  assert.equal(l.report(600), false);
  assert.equal(l.report(700), false);
  assert.equal(l.level, 1);
  assert.equal(l.report(2600), true);
  assert.equal(l.level, 2);
  // drops far apart (over the 4 s window) never step down
  const m = new VideoLadder();
  for (let t = 0; t < 60_000; t += 5000) assert.equal(m.report(t), false);
  assert.equal(m.level, 0);
});

test('the bottom holds; calm steps back up one level at a time', () => {
  const l = new VideoLadder();
  let t = 0;
  for (; l.level < VIDEO_LADDER.length - 1; t += 2500) { l.report(t); l.report(t + 100); }
  assert.equal(l.report(t), false);
  assert.equal(l.report(t + 100), false);
  assert.equal(l.level, VIDEO_LADDER.length - 1);
  const calm = t + 100;
  assert.equal(l.tick(calm + 7000), false);  // not calm long enough
  assert.equal(l.tick(calm + 8000), true);
  assert.equal(l.level, VIDEO_LADDER.length - 2);
  assert.equal(l.tick(calm + 9000), false);  // the next step needs another calm spell
  assert.equal(l.tick(calm + 16000), true);
  l.report(calm + 16500);  // trouble resets the calm
  assert.equal(l.tick(calm + 23000), false);
  assert.equal(l.tick(calm + 24500), true);
  assert.deepEqual([l.downs, l.ups], [VIDEO_LADDER.length - 1, 3]);
});
