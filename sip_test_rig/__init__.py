"""Test rig for SIP servers: a pjsua2 softphone subprocess, sipp scenarios, a Kamailio fixture.

The rig is proven against Kamailio (a registrar known to be correct) so that the same tools can be
pointed at ucgate. Nothing here is imported by ``ucgate`` itself.
"""
