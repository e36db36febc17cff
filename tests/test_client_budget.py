"""Below the per-link floor (media.min_video_kbps) video pauses and the call goes on audio-only,
with a notice: a server configured with a tiny upload budget, two Chromiums."""

from __future__ import annotations

import pytest

from tests.support.webclient import new_participant

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# 1 link: 120 kbit/s, minus audio's share, is under the 100 kbit/s floor
WEB_SERVER_ENV = {"INCOGNITO_MEDIA_UPLOAD_KBPS": "120", "INCOGNITO_MEDIA_MIN_VIDEO_KBPS": "100"}

NOTICE = "document.querySelector('[data-notice=budget]')"
SENDER = """
() => [...incognito.mesh.links.values()].map((l) => {
  const tx = l.videoTx; const p = tx && tx.sender.getParameters();
  return p && p.encodings && p.encodings[0] ? {active: p.encodings[0].active,
    maxBitrate: p.encodings[0].maxBitrate} : null;
})
"""


async def test_video_pauses_below_the_floor_and_sound_goes_on(turn_server, webchromium, shots):
    a = await new_participant(webchromium, turn_server.url, "Ann")
    await a.join()
    b = await new_participant(webchromium, turn_server.url, "Ben")
    await b.join()
    for p in (a, b):
        await p.wait("incognito.sig.media.uploadKbps === 120")
        await p.wait(NOTICE + " !== null")
        text = await p.js(NOTICE + ".textContent")
        assert "Video paused" in text and "Sound goes on" in text, text
        await p.wait(f"({SENDER})().every((e) => e && e.active === false)")
        # the other side is told, and shows a picture of initials instead of a frozen frame
        await p.wait("[...document.querySelectorAll('#grid .tile:not(.self)')]"
                     ".every((t) => t.dataset.camOff === 'true')")
    # sound flows (energy rising), video frames do not
    first = await a.stats()
    peer = next(iter(first))
    await a.wait(f"incognito.mesh.links.get({peer!r}).pc.getStats().then((r) => {{"
                 "let e = 0; r.forEach((s) => { if (s.type === 'inbound-rtp' && "
                 f"s.kind === 'audio') e += s.totalAudioEnergy || 0; }}); "
                 f"return e > {first[peer]['energy']} + 0.0001; }})")
    s1 = (await a.stats())[peer]
    await a.wait(f"incognito.mesh.links.get({peer!r}).pc.getStats().then((r) => {{"
                 "let p = 0; r.forEach((s) => { if (s.type === 'inbound-rtp' && "
                 f"s.kind === 'audio') p += s.packetsReceived; }}); return p > "
                 f"{s1['audioPackets']} + 50; }})")
    s2 = (await a.stats())[peer]
    assert s2["frames"] - s1["frames"] <= 2, (s1, s2)
    await a.page.screenshot(path=str(shots / "audio-only-notice.png"))
