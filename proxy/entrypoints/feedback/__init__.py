"""`POST /v1/rapport/feedback`: a user's rating, choice or correction of a response Rapport gave them."""
