from model.contract import InputContract

SMALL = {"min_size": 96, "max_size": 160}  # resize for fast CPU tests
CONTRACT = InputContract(**SMALL)
