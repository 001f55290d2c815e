namespace CMoE.MLNet; internal static class Placeholder { }
