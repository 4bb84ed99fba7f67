"""opmon.dashboard: the live Bokeh dashboard with steering (issue 6).

It only listens to the display channels and talks to the acquisition over the control channel
(docs/protocol.md); it never imports acquisition. Entry points: `DashboardServer` /
`DashboardConfig` (dashboard/server.py) and `opmon dashboard` (opmon/commands/dashboard.py,
`start_dashboard`). The model (`DashboardModel`) is transport-free and fed by
`DisplaySubscriber`; each browser tab is a `Session` that patches what changed. Steering is
authorised by a session cookie the token is exchanged for (dashboard/auth.py), and the token
is kept out of the logs (dashboard/redact.py).
"""
