"""imgpipe on AWS: the CloudFormation template (imgpipe.yaml), the host's systemd units and set-up
(systemd/, host/), and `python -m deploy up|status|down`."""
