from prernn_cli.cli import app

app(prog_name="prernn")
