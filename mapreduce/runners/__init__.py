"""The three ways to run mapper.py and reducer.py: a shell pipe, local Hadoop, an EMR step."""
