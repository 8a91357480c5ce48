"""Peer servers measured against twopass on the same model, preprocessing, threads and client.

``bento_service`` (BentoML, served from its own virtualenv) and ``gibbs_server`` (a gibbs Hub in
FastAPI) are started by ``compare``, which loads all of them with the same requests.
"""
