"""The corpora: each folder's prepare.py writes its train.bin and val.bin; common.py holds what they share."""
