using CMoE.Cli;

// cmoe: carve, evaluate, fine-tune, score, sweep and benchmark CMoE models (the commands: CliApp).
using var cancel = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancel.Cancel(); };
return CliApp.Run(args, cancel.Token);
