// Grafana's own front-end code as an oracle: each answer of the host's Grafana connector
// (an array of `{target, datapoints}`) goes through `toDataFrame`, as simPod's plugin does,
// then through `outerJoinDataFrames`, as the time series panel does with several series.
// Reads `[answer, ...]` as JSON on stdin; writes, per answer, how many points it held and
// which of them the join lost (a point is kept when the joined frame has, at its time, its
// value in its series' field).
const { toDataFrame, outerJoinDataFrames } = require('@grafana/data');

let input = '';
process.stdin.on('data', (chunk) => (input += chunk));
process.stdin.on('end', () => {
  const answers = JSON.parse(input);
  const report = answers.map((answer) => {
    const frames = answer.map(toDataFrame);
    const joined = outerJoinDataFrames({ frames });
    const time = joined ? Array.from(joined.fields[0].values) : [];
    const rowAt = new Map(time.map((t, row) => [t, row]));
    let points = 0;
    const lost = [];
    frames.forEach((frame, index) => {
      const field = joined ? joined.fields[index + 1] : undefined;
      const times = frame.fields.find((f) => f.type === 'time').values;
      const values = frame.fields.find((f) => f.type !== 'time').values;
      for (let i = 0; i < frame.length; i++) {
        points++;
        const row = rowAt.get(times[i]);
        const kept = row === undefined || field === undefined ? 'no row' : field.values[row];
        const same = kept === values[i] || (row !== undefined && kept == null && values[i] == null);
        if (!same) {
          lost.push({ series: answer[index].target, time: times[i], value: values[i], joined: kept });
        }
      }
    });
    return { points, rows: time.length, lost: lost.length, examples: lost.slice(0, 5) };
  });
  process.stdout.write(JSON.stringify(report));
});
