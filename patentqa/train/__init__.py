"""patentqa.train"""
