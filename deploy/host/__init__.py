"""What runs on the deployed host, once at set-up: setup.sh (as root) and provision.py."""
