from cxrctx.cli import app

app()
