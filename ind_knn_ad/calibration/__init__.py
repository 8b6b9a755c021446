"""Where "defective" starts: threshold rules, operating points, synthetic defects, detectability."""
