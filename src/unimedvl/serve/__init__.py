"""`unimedvl serve`: an OpenAI-compatible HTTP API and a web page over one loaded model (`app.py`)."""
