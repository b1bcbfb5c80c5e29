"""relay's web pages: the tenant portal (/portal) and the operator console (/console).

Server-rendered (Jinja2, autoescaped) with a little plain JavaScript, all shipped in
the package: no build step, no CDN. ``relay.web.site.setup(app)`` is the one hook in
relay/app.py.
"""
