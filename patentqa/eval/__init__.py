"""patentqa.eval"""
