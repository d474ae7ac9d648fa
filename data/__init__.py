"""The corpora: each folder's prepare.py writes its train.bin and val.bin; prepare_common.py holds what they share."""
