"""The embedded media anchor: ucgate's own WebRTC ↔ RTP/AVP bridge, nothing to install.

Design (see ``worker.py`` for the media path):

* ucgate runs a pool of worker processes (``EmbeddedAnchor``), each hosting a few
  sessions; a crash loses only that worker's calls, and processes spread the media work
  over the cores (one Python process is one core at most).
* the WebRTC side of a session is aiortc; the RTP side is a plain RTP/AVP socket written
  directly in the worker, not pjsua2. pjsua2 terminates RTP only through a SIP call, which
  needs an in-worker SIP "SDP broker", a pj thread and a cross-thread audio port per
  session; a G.711 RTP/AVP endpoint is a socket, a packet header and aiortc's own G.711
  codec, and it has no 4-calls-per-process limit. pjsua2 would bring codecs the bridge
  does not need (trunks and phones all speak G.711), jitter buffering (the bridge keeps
  a bounded queue) and RTCP (not sent on the RTP side, see the report).
"""

from ucgate.media.embedded.anchor import EmbeddedAnchor

__all__ = ["EmbeddedAnchor"]
